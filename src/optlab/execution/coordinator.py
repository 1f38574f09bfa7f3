"""The coordinator: the store's single writer, fed by the executor's events.

It records the study, recovers what an earlier crash left, plans the runs still to do,
drives the pool, writes events to the store in batches (holding the file only while it
writes), keeps the live view, and ends with a summary.

It never gives up on the store: the workers' journals hold every event, so while another
process holds the file (a notebook, a long query) the coordinator warns and keeps trying,
and if it must stop first (Ctrl-C again, a full disk) the next `optlab run` ingests them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from optlab import leases, locations
from optlab.errors import StoreBusy, StoreFull
from optlab.execution import finals
from optlab.execution.devices import Slot
from optlab.execution.executors import Executor
from optlab.execution.executors.work import WorkQueue
from optlab.execution.halving import load as halving_state
from optlab.execution.halving import unit_key
from optlab.execution.plan import plan_runs
from optlab.execution.progress import RunView, describe_axes
from optlab.execution.tuning import Tuning
from optlab.states import Event, State
from optlab.store import core as st
from optlab.store import records
from optlab.store.liveness import WriterLock
from optlab.study.expand import BlockPlan, RunSpec, all_runs
from optlab.study.schema import Study, is_final_block

FLUSH_SECONDS = 1.0
BUSY_WARN_SECONDS = 30.0


@dataclass
class Outcome:
    planned: int
    statuses: dict[str, str] = field(default_factory=dict)  # run_id -> final status
    errors: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    stopped: str | None = None  # why the study stopped early (a full disk)
    held: bool = False  # the session's time (--stop-after) was up: runs checkpointed, handed back
    unwritten: int = 0  # events left in the journals only (the store stayed busy or full)
    seconds: float = 0.0
    runs: dict[str, RunSpec] = field(default_factory=dict)  # the planned and those added


class Coordinator:
    def __init__(
        self,
        store: Path,
        specs: list[RunSpec],
        session_id: str,
        view: RunView,
        lock: WriterLock | None = None,
        nodes: Callable[[], dict[str, int]] | None = None,
        tuning: Tuning | None = None,
    ):
        self.store, self.session_id, self.view, self.lock = store, session_id, view, lock
        self.tuning = tuning
        self.went_on: set[str] = set()  # runs halving let go on past a rung this session
        self.roots = locations.roots(store)
        self.nodes = nodes or dict
        self.specs = {s.run_id: s for s in specs}
        self.planned = set(self.specs)  # the runs this session is to finish
        self.batch: list[dict[str, Any]] = []
        self.worker_of: dict[str, str] = {}
        self.outcome = Outcome(planned=len(specs), runs=self.specs)
        self.request_stop = lambda: None  # set by execute: stops the pool
        self._lock = asyncio.Lock()
        self._best: dict[str, float] = {}
        self._busy_since: float | None = None
        self._busy_warned = 0.0
        self.full = False  # the store's disk is full: stop writing, the journals keep it

    def sink(self, event: dict[str, Any]) -> None:
        kind, run_id = event["type"], event.get("run_id")
        spec = self.specs.get(run_id)
        worker = self.worker_of.get(run_id)
        if kind == "assigned":
            self.worker_of[run_id] = event["worker"]
            self.view.worker_started_run(event["worker"], self.label(spec), spec.config["epochs"])
            return
        if kind == "note":
            self.view.note(event["text"])
            return
        if kind == "silent":
            self.view.silent(event["worker"], event["seconds"])
            if event["seconds"]:
                self.view.note(
                    f"worker {event['worker']} (run {run_id}) has been silent for "
                    f"{event['seconds']:.0f} s"
                )
            return
        self.batch.append(event)
        if self.tuning is not None:
            decided, _ = self.tuning.see(event)
            self.batch += decided
            for ev in decided:
                self._decided(ev, worker if ev["run_id"] == run_id else None)
        if kind == Event.PAUSED:
            self.view.idle(worker)
        elif kind == Event.HELD:
            self.outcome.statuses[run_id] = State.INTERRUPTED
            self.view.run_ended(
                worker, self.label(spec), "held", f"at epoch {event['epoch']}, checkpointed"
            )
        elif kind == Event.EPOCH:
            self.view.epoch(worker, event["epoch"], event.get("test_acc"))
            self._best[run_id] = max(self._best.get(run_id, 0.0), event.get("test_acc") or 0.0)
        elif kind in (Event.STARTED, Event.RESUMED):
            for skipped in event.get("skipped") or []:
                self.view.note(f"run {run_id}: checkpoint {skipped}; not used")
            if kind == Event.RESUMED:
                self.view.epoch(worker, event["epoch"], None)
            if kind == Event.RESUMED and run_id not in self.went_on:
                self.view.note(
                    f"resumed {self.label(spec)} from epoch {event['epoch']} "
                    f"({event['checkpoint']})"
                )
        elif kind == Event.DISK_FULL:
            self.outcome.statuses[run_id] = State.INTERRUPTED
            self.stop(f"disk full: {event.get('error')}")
        elif kind in (Event.FINISHED, Event.FAILED, Event.DIVERGED):
            status = State.DONE if kind == Event.FINISHED else kind
            self.outcome.statuses[run_id] = status
            if event.get("error"):
                self.outcome.errors[run_id] = event["error"]
            detail = (
                f"best test_acc {self._best.get(run_id, 0.0):.4f}"
                if status == State.DONE
                else event.get("error", "")
            )
            self.view.run_ended(worker, self.label(spec), status, detail)

    def paused_before(self, run_id: str, rung: int, decision: str | None) -> None:
        """A run an earlier session left paused at ``rung``: with a decision to go on
        journaled there, it goes on (not another attempt); without one (or told to wait),
        it arrives at the rung now, without being started, and is decided as if it had
        just paused there."""
        if decision == "continue":
            self.went_on.add(run_id)
            return
        arrival = {"type": Event.PAUSED, "run_id": run_id, "epoch": rung, "time": time.time()}
        decided, _ = self.tuning.see(arrival)
        self.batch += decided
        for ev in decided:
            self._decided(ev, None)

    def _decided(self, event: dict[str, Any], worker: str | None) -> None:
        """A halving decision: a stopped run has ended; one that goes on is queued."""
        run_id = event["run_id"]
        spec = self.specs.get(run_id) or self.tuning.halving.specs.get(run_id)
        self.specs.setdefault(run_id, spec)
        if event["decision"] == "stop":
            self.outcome.statuses[run_id] = State.STOPPED
            self.view.run_ended(
                worker, self.label(spec), State.STOPPED, f"at epoch {event['epoch']}"
            )
            return
        if event["decision"] != "continue":
            return
        self.went_on.add(run_id)
        if run_id not in self.planned:  # stopped in an earlier session, it goes on
            self.planned.add(run_id)
            self.outcome.planned += 1
            self.view.grow(1)

    def grow(self, runs: list[RunSpec]) -> None:
        """Runs added while the study runs (final runs)."""
        for run in runs:
            self.specs[run.run_id] = run
            self.planned.add(run.run_id)
        self.outcome.planned += len(runs)
        self.view.grow(len(runs))
        self.view.note(f"{len(runs)} final run(s) added: the search of their group is over")

    def stop(self, why: str) -> None:
        if self.outcome.stopped is None:
            self.outcome.stopped = why
            self.view.note(f"Stopping: {why}")
        self.request_stop()

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
            if self.lock is not None:
                self.lock.beat()
            await self.flush()

    async def flush(self, ended: bool = False) -> bool:
        """Write what has arrived; False (and the events kept) when the store is busy or the
        disk is full."""
        async with self._lock:
            batch, self.batch = self.batch, []
            if self.tuning is not None:
                self.tuning.taking_batch()
            try:
                await asyncio.to_thread(self._write, batch, ended)
            except (StoreBusy, StoreFull) as e:
                self.batch = batch + self.batch
                if self.tuning is not None:
                    self.tuning.write_failed()
                if isinstance(e, StoreBusy):
                    self._warn_busy()
                else:
                    self.full = True
                    self.stop(str(e))
                return False
            if self._busy_since is not None:
                self.view.note(f"{self.store}: free again; {len(batch)} events written")
            self._busy_since = None
            if self.tuning is not None:
                self.tuning.after_write(self.grow)
            return True

    def _warn_busy(self) -> None:
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        if now - self._busy_warned >= BUSY_WARN_SECONDS:
            self._busy_warned = now
            self.view.note(
                f"{self.store}: busy (another process holds it: a notebook or a long "
                f"query?) for {now - self._busy_since:.0f} s; training goes on, the "
                "events are safe in the run journals and are written when it is "
                "free"
            )

    def _write(self, batch: list[dict[str, Any]], ended: bool) -> None:
        with st.writing(self.store, timeout=0.5) as con:
            st.apply_events(con, batch, self.roots)
            if self.tuning is not None:
                self.tuning.ask_store(con)
            st.heartbeat(con, self.session_id, ended=ended, nodes=self.nodes())


@dataclass
class Prepared:
    todo: list[RunSpec]
    states: dict[str, str]  # run_id -> state, for every run of the study
    recovered: dict[str, str]  # run_id -> state, for runs an earlier session left unfinished
    recovered_epochs: int
    resume: dict[str, dict[str, Any]] = field(default_factory=dict)  # run_id -> task extras
    plans: list[BlockPlan] = field(default_factory=list)  # with the final runs known so far
    checkpoint_root: Path | None = None
    early_stop: bool = True  # False: --no-early-stop (stopped runs go on to their end)
    elsewhere: list[str] = field(default_factory=list)  # training in Slurm jobs: left to them


def prepare(
    store: Path,
    study: Study,
    plans: list[BlockPlan],
    retry_failed: bool,
    checkpoint_root: Path | None = None,
    matrix: set[str] | None = None,
    early_stop: bool = True,
) -> Prepared:
    """Record the study, recover what an earlier crash left, and plan the runs to do (with,
    for each, its checkpoint folder, where it may resume and its thread count). Blocks
    with ``final`` gain the final runs of the groups whose search is over."""
    root = Path(os.path.abspath(checkpoint_root or st.checkpoints_dir(store)))
    roots = locations.roots(store)
    live = leases.live_ids(store)  # runs training in Slurm jobs now
    with st.writing(store) as con:
        st.ensure_schema(con, store)
        recovered = st.recover(con, store, live=live)
        plans = finals.plans_with_finals(con, plans)
        runs = all_runs(plans)
        if matrix is not None:  # final runs belong to the file's matrix, as its search
            matrix = matrix | {r.run_id for p in plans if is_final_block(p.name) for r in p.runs}
        carried = st.register_study(con, study, plans, store, matrix)
        states = st.states(con, [r.run_id for r in runs])
        recovered_states = st.states(con, recovered)
        (epochs,) = con.execute(
            "select count(*) from epochs where run_id in (select unnest(?::varchar[]))", [recovered]
        ).fetchone()
        todo = plan_runs(runs, states, retry_failed, early_stop, _together(plans))
        elsewhere = [r.run_id for r in todo if r.run_id in live]
        todo = [r for r in todo if r.run_id not in live]
        # Stopped runs may go on in this session (a grown study): where they would resume.
        halved = {r.run_id: r for p in plans if p.early_stop for r in p.runs}
        stopped = [r for i, r in halved.items() if states.get(i) == State.STOPPED]
        points = st.resume_points(con, [r.run_id for r in [*todo, *stopped]])
        dirs = {}
        here = _folders_in(root)  # one listing instead of a stat a run
        prefix = str(root) + os.sep
        for run in [*todo, *stopped]:
            recorded = locations.resolve(points.get(run.run_id, {}).get("checkpoint_dir"), roots)
            there = False
            if recorded:
                recorded = str(recorded)
                name = recorded[len(prefix) :] if recorded.startswith(prefix) else ""
                there = name in here if name and os.sep not in name else Path(recorded).is_dir()
            use = recorded if recorded and there else prefix + run.run_id
            dirs[run.run_id] = locations.recorded(use, roots)
            points.setdefault(run.run_id, {})["checkpoint_dir"] = use
        st.set_checkpoint_dirs(con, dirs)
        st.own_checkpoint_root(con, locations.recorded(root, roots))
    records.save_study_record(store, study, plans, carried)
    if todo and root == Path(os.path.abspath(st.checkpoints_dir(store))):
        _git_ignored(root)
    return Prepared(
        todo, states, recovered_states, int(epochs), points, plans, root, early_stop, elsewhere
    )


def _together(plans: list[BlockPlan]) -> dict[str, tuple[int, int]]:
    """For runs of early-stopping blocks, where they go in the plan's order: all seeds of
    a configuration beside its first, so that the configuration reaches its rungs whole."""
    out: dict[str, tuple[int, int]] = {}
    for plan in plans:
        if plan.early_stop is None or not plan.runs:
            continue
        first = min(r.seed for r in plan.runs)
        at: dict[str, int] = {}
        for run in sorted(plan.runs, key=lambda r: (r.seed, r.position)):
            out[run.run_id] = (first, at.setdefault(unit_key(run.config), run.position))
    return out


def _git_ignored(folder: Path) -> None:
    """Checkpoints and weights (hundreds of MB a run) stay out of git, as a venv does: a
    ``.gitignore`` of ``*`` inside the folder, written once when optlab makes it."""
    ignore = folder / ".gitignore"
    if ignore.exists():
        return
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        ignore.write_text("# checkpoints and saved weights, written by optlab\n*\n")


def _folders_in(folder: Path) -> set[str]:
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _paused_before(
    store: Path, todo: list[RunSpec], prepared: Prepared, halving: Any
) -> dict[str, tuple[int, str | None]]:
    """The planned runs of early-stopping blocks that an earlier session left paused at a
    rung (run id -> (rung, decision journaled there or None))."""
    if not halving:
        return {}
    candidates = [
        r.run_id
        for r in todo
        if r.run_id in halving.unit_of and prepared.states.get(r.run_id) == State.INTERRUPTED
    ]
    return st.paused_at_rungs(store, candidates)


async def _drive(
    coord: Coordinator, executor: Executor, work: WorkQueue, slots: list[Slot], extra: Any
) -> None:
    stop = asyncio.Event()
    flusher = asyncio.create_task(coord.flusher(stop))
    try:
        await executor.run(work, slots, coord.sink, extra)
    finally:
        stop.set()
        await asyncio.shield(flusher)


async def _finish(coord: Coordinator, give_up: asyncio.Event) -> None:
    """Write what is left and mark unfinished runs interrupted, however long the store stays
    busy; only a full disk, or the user (Ctrl-C twice more), ends the wait, and then the
    journals keep the events for the next `optlab run`."""
    ids = list(coord.specs)  # the planned runs and those added since (final runs)

    def settle() -> dict[str, str]:
        with st.writing(coord.store, timeout=0.5) as con:
            recovered = st.recover(con, coord.store, ids)
            return st.states(con, recovered)

    while True:
        if await coord.flush(ended=True):
            try:
                coord.outcome.statuses.update(await asyncio.to_thread(settle))
                return
            except StoreBusy:
                coord._warn_busy()
            except StoreFull as e:
                coord.stop(str(e))
                coord.full = True
        if give_up.is_set() or coord.full:
            coord.outcome.unwritten = len(coord.batch)
            return
        await _wait(give_up, FLUSH_SECONDS)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


def combine(parts: list[Prepared]) -> Prepared:
    """Several studies' plans as one (`optlab run A.toml B.toml`): a run two of them share
    is run once."""
    if len(parts) == 1:
        return parts[0]
    todo: dict[str, RunSpec] = {}
    out = Prepared([], {}, {}, 0, {})
    for part in parts:
        for run in part.todo:
            todo.setdefault(run.run_id, run)
        out.states.update(part.states)
        out.recovered.update(part.recovered)
        out.recovered_epochs += part.recovered_epochs
        out.resume.update(part.resume)
        out.plans += part.plans
        out.checkpoint_root, out.early_stop = part.checkpoint_root, part.early_stop
        out.elsewhere += [i for i in part.elsewhere if i not in out.elsewhere]
    out.todo = list(todo.values())
    return out


def execute(
    store: Path,
    studies: Study | list[str],
    prepared: Prepared,
    slots: list[Slot],
    console: Console,
    executor: Executor,
    lock: WriterLock | None = None,
    deadline: float | None = None,
) -> Outcome:
    """Run the planned runs on ``executor``'s ``slots``. Ctrl-C stops the
    workers and leaves the runs resumable; more Ctrl-Cs are acknowledged, and a third gives
    up waiting for a busy store. At ``deadline`` (``time.time()``; --stop-after) no run
    starts, and those training stop at their epoch's end, checkpointed (``held``)."""
    todo = prepared.todo
    session_id = uuid.uuid4().hex[:12]
    names = [studies.name] if isinstance(studies, Study) else list(studies)
    ids = {r.run_id for r in todo}
    with st.writing(store) as con:
        st.start_session(con, session_id, names, len(slots), len(todo), executor.name)
        halving = halving_state(con, prepared.plans, ids) if prepared.early_stop else None
    paused = _paused_before(store, todo, prepared, halving)
    # A run waiting at a rung is not started again just to pause there again.
    work = WorkQueue([r for r in todo if paused.get(r.run_id, (0, "continue"))[1] == "continue"])
    if lock is not None:
        lock.beat(session=session_id, study=" + ".join(names))
    started = time.monotonic()
    view = RunView(console, len(todo), [s.label for s in slots])
    root = prepared.checkpoint_root or Path(os.path.abspath(st.checkpoints_dir(store)))
    tuning = Tuning(
        store, halving, prepared.plans, work, prepared.resume, root, prepared.states, ids
    )
    coord = Coordinator(store, todo, session_id, view, lock, executor.nodes, tuning)
    for run_id, (rung, decision) in sorted(paused.items()):
        coord.paused_before(run_id, rung, decision)

    def extra(spec: RunSpec, slot: Slot) -> dict[str, Any]:
        point = prepared.resume.get(spec.run_id, {})
        stop_at = tuning.stop_at(spec.run_id)
        return {
            "checkpoint_dir": point.get("checkpoint_dir"),
            "resume_upto": point.get("resume_upto", 0),
            "threads": point.get("threads") or slot.threads,
            **({"stop_at": stop_at} if stop_at is not None else {}),
            **({"deadline": deadline} if deadline is not None else {}),
            # going on past a rung is not another attempt at the run
            **({"past_rung": True} if spec.run_id in coord.went_on else {}),
        }

    async def main() -> None:
        loop = asyncio.get_running_loop()
        drive = asyncio.create_task(_drive(coord, executor, work, slots, extra))
        give_up = asyncio.Event()
        signals = 0

        def stop_pool() -> None:
            executor.halt()
            drive.cancel()

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                coord.outcome.interrupted = True
                view.note("Interrupted: stopping the workers; the runs stay resumable")
                stop_pool()
            elif signals >= 3:
                give_up.set()
            else:
                view.note(
                    "Still stopping (writing what the workers reported); press Ctrl-C "
                    "again to leave it in the journals for the next optlab run"
                )

        def handler(signum: int, frame: Any) -> None:
            loop.call_soon_threadsafe(on_signal)

        if deadline is not None:
            loop.call_later(max(0.0, deadline - time.time()), _time_is_up, coord, executor)
        coord.request_stop = stop_pool
        # Python-level handlers (not the loop's): asyncio.run then leaves SIGINT alone, and
        # when the study is over they are replaced without a moment of the default handler.
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await drive
            await _finish(coord, give_up)
        finally:
            for sig, before in previous.items():
                # Once interrupted, further Ctrl-Cs change nothing: the process is ending
                # (SIG_IGN, which Python keeps through its own shutdown).
                signal.signal(sig, signal.SIG_IGN if coord.outcome.interrupted else before)

    with view:
        asyncio.run(main())
    coord.outcome.seconds = time.monotonic() - started
    return coord.outcome


def _time_is_up(coord: Coordinator, executor: Executor) -> None:
    """--stop-after's deadline: no run starts; those training hold at their epoch's end."""
    if coord.outcome.interrupted or coord.outcome.stopped:
        return
    coord.outcome.held = True
    coord.view.note(
        "Time is up (--stop-after): no run starts now; those training stop at "
        "their epoch's end, checkpointed"
    )
    executor.halt()
