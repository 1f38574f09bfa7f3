"""The ``local`` executor: the warm worker pool of :mod:`optlab.execution.executors.pool`, on
this machine (the default)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from optlab.execution import devices
from optlab.execution.devices import Slot
from optlab.execution.executors import Sink, TaskExtra
from optlab.execution.executors.pool import LocalPool
from optlab.execution.executors.work import WorkQueue
from optlab.plugins.plugin import NoParams, Plugin
from optlab.study.expand import RunSpec


class LocalExecutor:
    """The warm worker pool of :mod:`optlab.execution.executors.pool`, on this machine."""

    name = "local"

    def __init__(
        self,
        store: Path,
        stall_timeout: float = 600.0,
        python: str | None = None,
        data_dir: Path | None = None,
    ):
        self.store, self.stall_timeout, self.data_dir = store, stall_timeout, data_dir
        self.python = (
            python  # the interpreter that runs `-m optlab.training.worker` (tests: a fake)
        )
        self.pool = None
        self._halted = False

    def make_slots(
        self, gpus: str | None, per_gpu: int, workers: int | None, runs: int | None
    ) -> list[Slot]:
        return self.slots(gpus, per_gpu, workers, runs)

    @staticmethod
    def slots(gpus: str | None, per_gpu: int, workers: int | None, runs: int | None) -> list[Slot]:
        available = devices.visible_gpus()
        chosen = devices.parse_gpus(
            gpus if gpus is not None else ("all" if available else "none"), available
        )
        if workers is None and runs is not None:
            workers = min(os.cpu_count() or 1, runs)
        return devices.make_slots(chosen, per_gpu, workers)

    def where(self, slots: list[Slot]) -> str:
        gpus = sorted({s.gpu for s in slots if s.gpu is not None})
        return f"{len(gpus)} GPU(s) x {len(slots) // len(gpus)}" if gpus else "CPU"

    def notes(
        self, slots: list[Slot], per_gpu: int, workers: int | None, runs: list[RunSpec]
    ) -> list[str]:
        return devices.cpu_notes(slots, per_gpu, workers, runs)

    async def run(
        self, work: WorkQueue, slots: list[Slot], sink: Sink, task_extra: TaskExtra
    ) -> None:
        options: dict[str, Any] = {"python": self.python} if self.python else {}
        self.pool = LocalPool(
            slots,
            self.store,
            stall_timeout=self.stall_timeout,
            task_extra=task_extra,
            data_dir=self.data_dir,
            **options,
        )
        if self._halted:
            self.pool.halt()
        await self.pool.run(work, sink)

    def halt(self) -> None:
        self._halted = True
        if self.pool is not None:
            self.pool.halt()

    def nodes(self) -> dict[str, int]:
        return {socket.gethostname(): len(self.pool.slots)} if self.pool else {}

    def close(self) -> None:
        pass


def _build_local(
    params: NoParams,
    *,
    store: Path,
    stall_timeout: float = 600.0,
    data_dir: Path | None = None,
    **_: Any,
) -> LocalExecutor:
    return LocalExecutor(store, stall_timeout, data_dir=data_dir)


def _check_local(
    params: NoParams, *, gpus: str | None, per_gpu: int, workers: int | None, **_: Any
) -> None:
    """The slots this machine can give, before anything slow: a bad --gpus is one line."""
    LocalExecutor.slots(gpus, per_gpu, workers, None)


local = Plugin(
    "worker processes on this machine (the default)",
    NoParams,
    _build_local,
    check=_check_local,
)
