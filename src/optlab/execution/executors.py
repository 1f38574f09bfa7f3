"""Executors: where a study's runs are trained. Plugins in the ``optlab.executors`` group.

``local`` (the default) is the asyncio pool of worker processes on this machine; ``ray``
runs the same workers as Ray actors across a cluster. Either way the coordinator on this
machine receives every event and alone writes the store.

An executor plugin's ``build(params, **context)`` returns an :class:`Executor`. The context:

- ``store``: the store's path (the executor writes run logs and journals beside it);
- ``stall_timeout``: seconds a worker may go without progress before it is killed;
- ``data_dir``: where this machine keeps datasets (a node may use its own);
- ``checkpoints_shared``: the user named ``--checkpoint-dir``, a folder every worker can
  reach; otherwise checkpoints live beside the store, on this machine only;
- ``datasets``: the study's distinct dataset tables, for nodes that prepare their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field

from optlab.plugins.plugin import NoParams, Params, Plugin
from optlab.study.expand import RunSpec
from optlab.training import devices
from optlab.training.devices import Slot

Sink = Callable[[dict[str, Any]], None]
TaskExtra = Callable[[RunSpec, Slot], dict[str, Any]]


class Executor(Protocol):
    """What the coordinator drives."""

    name: str

    def make_slots(
        self, gpus: str | None, per_gpu: int, workers: int | None, runs: int | None
    ) -> list[Slot]:
        """The worker slots for ``--gpus``/``--per-gpu``/``--workers``; ``runs`` (when known)
        caps the default number of CPU slots. Raises UsageError for what cannot be had."""

    def where(self, slots: list[Slot]) -> str:
        """A few words for the start line: ``2 GPU(s) x 4``, ``CPU``, ``ray: 3 nodes``."""

    async def run(
        self, specs: list[RunSpec], slots: list[Slot], sink: Sink, task_extra: TaskExtra
    ) -> None:
        """Train ``specs`` on ``slots``, sending every event to ``sink`` (in order per run),
        until all have ended or :meth:`halt` was called. Cancelling it stops the workers and
        leaves the runs resumable. Besides the workers' events it may send ``assigned``
        (run_id, worker), ``silent`` (run_id, worker, seconds) and ``note`` (text)."""

    def halt(self) -> None:
        """Start no more runs (a full disk)."""

    def nodes(self) -> dict[str, int]:
        """Where the slots are running now: node name -> slots."""

    def close(self) -> None:
        """Let go of what :func:`build` acquired (a Ray connection)."""


class LocalExecutor:
    """The warm worker pool of :mod:`optlab.execution.pool`, on this machine."""

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

    async def run(
        self, specs: list[RunSpec], slots: list[Slot], sink: Sink, task_extra: TaskExtra
    ) -> None:
        from optlab.execution.pool import LocalPool

        options: dict[str, Any] = {"python": self.python} if self.python else {}
        if self.data_dir is not None:  # the workers' data folder, not this process's
            options["env"] = {"OPTLAB_DATA": str(self.data_dir)}
        self.pool = LocalPool(
            slots, self.store, stall_timeout=self.stall_timeout, task_extra=task_extra, **options
        )
        self.pool.stopping = self._halted
        await self.pool.run(specs, sink)

    def halt(self) -> None:
        self._halted = True
        if self.pool is not None:
            self.pool.stopping = True

    def nodes(self) -> dict[str, int]:
        import socket

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


class RayParams(Params):
    address: str | None = Field(
        None,
        description="A running cluster: 'auto' (the one this machine belongs to) or "
        "HOST:PORT of its head; none starts Ray on this machine alone.",
    )


def option_name(key: str) -> str:
    """How the user gives an executor option: --address (a shorthand), else --executor-opt."""
    return "--address" if key == "address" else f"--executor-opt {key}"


def parse_options(pairs: list[str], address: str | None) -> dict[str, str]:
    """``--executor-opt KEY=VALUE`` (repeatable) and the ``--address`` shorthand, as the
    executor's options; one line for what is not KEY=VALUE or is given twice."""
    from optlab.errors import UsageError

    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--executor-opt {pair!r}: give KEY=VALUE, such as address=auto")
        if key in options:
            raise UsageError(f"--executor-opt {key}: given twice; give it once")
        options[key] = value.strip()
    if address is not None:
        if "address" in options and options["address"] != address:
            raise UsageError("--address and --executor-opt address= disagree; give one")
        options["address"] = address
    return options


local = Plugin("worker processes on this machine (the default)", NoParams, _build_local)
ray = Plugin(
    "Ray actors across a cluster, one per slot; needs pip install 'optlab[ray]'",
    RayParams,
    "optlab.execution.ray_executor:build",
)


def create(name: str, params: dict[str, Any], **context: Any) -> Executor:
    """The executor ``name`` built with ``params`` (its own options, as strings or values:
    ``--executor-opt KEY=VALUE``; ``--address`` is ``address``) and the context."""
    from pydantic import ValidationError

    from optlab.errors import UsageError
    from optlab.plugins.registry import default_registry

    plugin = default_registry().get("executor", name)
    given = {k: v for k, v in params.items() if v is not None}
    takes = ", ".join(plugin.params.model_fields) or "none"
    try:
        validated = plugin.params(**given)
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        if first["type"] == "extra_forbidden":
            unknown = [k for k in given if k not in plugin.params.model_fields]
            options = ", ".join(option_name(k) for k in unknown)
            raise UsageError(
                f"{options}: not an option of --executor {name}"
                + ("" if unknown == ["address"] else f" (it takes: {takes})")
            ) from None
        raise UsageError(f"{option_name(key)} {given.get(key)!r}: {first['msg']}") from None
    try:
        build = plugin.builder()
    except ImportError as e:
        raise UsageError(
            f"--executor {name} needs {e.name or 'a package'}, which is not "
            f"installed: pip install 'optlab[{name}]'"
        ) from None
    return build(validated, **context)
