"""The coordinator: the store's single writer, fed by the executor's events.

It records the study, recovers what an earlier crash left, plans the runs still to do,
drives the pool, writes events to the store in batches (holding the file only while it
writes), keeps the live view, and ends with a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from optlab import store as st
from optlab.devices import Slot
from optlab.errors import StoreError
from optlab.expand import BlockPlan, RunSpec, all_runs
from optlab.plan import plan_runs
from optlab.pool import LocalPool
from optlab.study import Study
from optlab.view import RunView, describe_axes

FLUSH_SECONDS = 1.0


@dataclass
class Outcome:
    planned: int
    statuses: dict[str, str] = field(default_factory=dict)  # run_id -> final status
    errors: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0


@contextlib.contextmanager
def writer_lock(store: Path) -> Iterator[None]:
    """One `optlab run` writes to a store at a time."""
    lock_path = store.with_name(store.name + ".lock")
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise StoreError(f"{store}: another optlab run (pid {pid}) is writing to this store; "
                             "wait for it or use another --store") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Coordinator:
    def __init__(self, store: Path, specs: list[RunSpec], session_id: str, view: RunView):
        self.store, self.session_id, self.view = store, session_id, view
        self.specs = {s.run_id: s for s in specs}
        self.batch: list[dict[str, Any]] = []
        self.worker_of: dict[str, str] = {}
        self.outcome = Outcome(planned=len(specs))
        self._lock = asyncio.Lock()
        self._best: dict[str, float] = {}

    def sink(self, event: dict[str, Any]) -> None:
        kind, run_id = event["type"], event.get("run_id")
        spec = self.specs.get(run_id)
        if kind == "assigned":
            self.worker_of[run_id] = event["worker"]
            self.view.worker_started_run(event["worker"], self.label(spec),
                                         spec.config["epochs"])
            return
        self.batch.append(event)
        worker = self.worker_of.get(run_id)
        if kind == "epoch":
            self.view.epoch(worker, event["epoch"], event.get("test_acc"))
            self._best[run_id] = max(self._best.get(run_id, 0.0), event.get("test_acc") or 0.0)
        elif kind in ("finished", "failed", "diverged"):
            status = "done" if kind == "finished" else kind
            self.outcome.statuses[run_id] = status
            if event.get("error"):
                self.outcome.errors[run_id] = event["error"]
            detail = (f"best test_acc {self._best.get(run_id, 0.0):.4f}" if status == "done"
                      else event.get("error", ""))
            self.view.run_ended(worker, self.label(spec), status, detail)

    @staticmethod
    def label(spec: RunSpec | None) -> str:
        if spec is None:
            return "?"
        return f"{spec.run_id} {describe_axes(spec.axes, spec.seed)}"

    async def flusher(self, stop: asyncio.Event) -> None:
        """Flush about once a second until ``stop``; never cancelled mid-write."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_SECONDS)
            await self.flush()

    async def flush(self, ended: bool = False) -> None:
        async with self._lock:
            batch, self.batch = self.batch, []
            try:
                await asyncio.to_thread(self._write, batch, ended)
            except StoreError:
                self.batch = batch + self.batch  # journals hold them too; try again later
                if ended:
                    raise

    def _write(self, batch: list[dict[str, Any]], ended: bool) -> None:
        with st.writing(self.store) as con:
            st.apply_events(con, batch)
            st.heartbeat(con, self.session_id, ended=ended)


@dataclass
class Prepared:
    todo: list[RunSpec]
    states: dict[str, str]  # run_id -> state, for every run of the study
    recovered: dict[str, str]  # run_id -> state, for runs an earlier session left unfinished
    recovered_epochs: int


def prepare(store: Path, study: Study, plans: list[BlockPlan], retry_failed: bool) -> Prepared:
    """Record the study, recover what an earlier crash left, and plan the runs to do."""
    runs = all_runs(plans)
    with st.writing(store) as con:
        st.ensure_schema(con)
        recovered = st.recover(con, store)
        st.register_study(con, study, plans, store)
        states = st.states(con, [r.run_id for r in runs])
        found = st.states(con, recovered)
        (epochs,) = con.execute("select count(*) from epochs where run_id in "
                                "(select unnest(?::varchar[]))", [recovered]).fetchone()
    return Prepared(plan_runs(runs, states, retry_failed), states, found, int(epochs))


async def _drive(coord: Coordinator, pool: LocalPool, todo: list[RunSpec]) -> None:
    stop = asyncio.Event()
    flusher = asyncio.create_task(coord.flusher(stop))
    try:
        await pool.run(todo, coord.sink)
    finally:
        stop.set()
        await asyncio.shield(flusher)


def execute(store: Path, study: Study, todo: list[RunSpec], slots: list[Slot],
            console: Console) -> Outcome:
    """Run ``todo`` on a local pool; Ctrl-C stops the workers and leaves runs resumable."""
    session_id = uuid.uuid4().hex[:12]
    with st.writing(store) as con:
        st.start_session(con, session_id, study.name, len(slots), len(todo))
    started = time.monotonic()
    view = RunView(console, len(todo), [s.label for s in slots])
    coord = Coordinator(store, todo, session_id, view)
    pool = LocalPool(slots, store)

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await _drive(coord, pool, todo)
        except asyncio.CancelledError:
            coord.outcome.interrupted = True
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await coord.flush(ended=True)

    with view:
        asyncio.run(main())
    with st.writing(store) as con:
        # Whatever the pipe did not deliver is in the journals; unfinished runs -> interrupted.
        recovered = st.recover(con, store, [s.run_id for s in todo])
        coord.outcome.statuses.update(st.states(con, recovered))
    coord.outcome.seconds = time.monotonic() - started
    return coord.outcome
