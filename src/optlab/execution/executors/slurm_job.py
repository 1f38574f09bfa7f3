"""One Slurm job's life, on its node: take runs, train them, and at the time limit hold them
and requeue. submitit pickles a :class:`NodeJob` at submission and calls it in the job.

The job starts the local pool on the node's slots (``--gpus``/``--per-gpu``/``--workers``
mean there what they mean on one machine) and feeds it from the submission's plan: each
slot takes the next run that has not ended and that no live job holds, through the run's
lease (:mod:`optlab.leases`), which the job renews while the run trains. Workers journal
every event themselves, beside the store; the job never opens the store. What the pool
reports without a worker (a worker that died or stalled) the job appends to the run's
journal, so the store learns it when it folds the journals in.

At the time limit (or a preemption announced the same way) Slurm sends USR2 to the job: no
run starts, each run training stops at its epoch's end with a checkpoint (``held``), its
lease is let go, and the job asks submitit to requeue it. The requeued job takes the runs
again (its own leases at once, others' once stale) and they resume from their checkpoints.
A slot with nothing left to take waits while the job's other slots train, taking over the
runs of jobs that died (stale leases); when the job has nothing to train it ends, freeing
its node.

A submission of a study with successive halving or final runs trains each run to its next
rung only. The last of its jobs to end then goes on: it calls what the submitting command
left beside the plan (`optlab run` again, in this process), which decides at the rung and
submits the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import socket
from pathlib import Path
from typing import Any

from optlab import leases
from optlab.events import Progress, open_journal, progress, read_journal, write_events
from optlab.execution.devices import Slot
from optlab.execution.executors.local import LocalExecutor
from optlab.execution.executors.pool import LocalPool
from optlab.execution.executors.work import WorkQueue
from optlab.locations import journal_path
from optlab.states import Event, State

RESULTS = (State.DONE, State.DIVERGED, State.STOPPED)  # ended whenever they ended
CONTINUATION = "continue.pkl"  # beside the plan: what the last job calls to go on


class PlannedRun:
    """A run as the plan holds it: what the pool needs of a RunSpec."""

    def __init__(self, entry: dict[str, Any]):
        self.entry = entry
        self.run_id: str = entry["task"]["run_id"]
        self.config: dict[str, Any] = entry["task"]["config"]

    def task(self) -> dict[str, Any]:
        return dict(self.entry["task"])


def holder_id() -> str:
    """This job as Slurm names it across requeues (an array task: ARRAYID_TASK), or the
    process submitit's local executor started."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"local-{env.get('SUBMITIT_LOCAL_JOB_ID') or os.getpid()}"


def run_ended(found: Progress | None, since: float) -> bool:
    """Whether the run needs no more training in this submission: a result (whenever it
    came), or a failure during this submission (one from before is why it was submitted)."""
    if found is None or found.ended is None:
        return False
    return found.ended in RESULTS or (found.ended_at or 0.0) >= since


class Claims(WorkQueue):
    """The plan's runs, taken one at a time through their leases. ``take`` waits (checking
    for stale leases every ``poll`` seconds) while this job trains a run and none can be
    taken; with nothing in flight it gives None: the job's part is over."""

    def __init__(self, store: Path, plan: dict[str, Any], holder: str, node: str):
        super().__init__()
        self.store, self.holder, self.node = store, holder, node
        self.runs = [PlannedRun(e) for e in plan["runs"]]
        self.since = float(plan["created"])
        self.stale_after = float(plan["lease"])
        self.poll = max(1.0, min(10.0, self.stale_after / 4))
        self.ended: set[str] = set()
        self.mine: set[str] = set()
        self._taking: asyncio.Lock | None = None  # one slot at a time looks for a run

    def _next(self) -> PlannedRun | None:
        for run in self.runs:
            if run.run_id in self.ended or run.run_id in self.mine:
                continue
            held = leases.read(self.store, run.run_id)
            if held is not None and held.live and held.holder != self.holder:
                continue  # another job trains it (a lease is cheaper to read than a journal)
            if self.done_here(run):
                self.ended.add(run.run_id)
                continue
            if leases.claim(self.store, run.run_id, self.holder, self.node, self.stale_after):
                self.mine.add(run.run_id)
                return run
        return None

    def done_here(self, run: PlannedRun) -> bool:
        """Whether the run needs no more training in this submission: it ended, or it has
        reached the rung it was to stop at (its group is decided on by the next one)."""
        events = read_journal(journal_path(self.store, run.run_id))
        if run_ended(progress(events), self.since):
            return True
        rung = run.entry.get("stop_at")
        last = events[-1] if events else {}
        return rung is not None and last.get("type") == Event.PAUSED and last["epoch"] >= rung

    async def take(self) -> Any:
        self._taking = self._taking or asyncio.Lock()
        while not self.closed:
            async with self._taking:  # (two slots taking back this job's own lease at once)
                run = await asyncio.to_thread(self._next)
            if run is not None:
                self.in_flight += 1
                return run
            if self.in_flight == 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed(), self.poll)
        return None

    def let_go(self, run_id: str) -> None:
        self.mine.discard(run_id)
        leases.release(self.store, run_id, self.holder)

    def left(self) -> bool:
        """Whether a run of the plan has not ended (by its journal)."""
        return not all(self.done_here(r) for r in self.runs)


class NodeJob:
    """What each of a submission's jobs runs (submitit pickles it): ``store`` is the
    store's path on the shared filesystem, ``submission`` the plan's name beside it."""

    def __init__(self, store: str, submission: str):
        self.store, self.submission = store, submission

    def __call__(self) -> str:
        store = Path(self.store)
        plan = json.loads(leases.plan_path(store, self.submission).read_text())
        holder, node = holder_id(), socket.gethostname()
        hold = leases.submissions_dir(store) / self.submission / "hold" / holder
        hold.unlink(missing_ok=True)  # a requeued job starts afresh
        claims = Claims(store, plan, holder, node)
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        print(f"optlab job {holder} on {node}: submission {self.submission}", flush=True)
        held = asyncio.run(_train(store, plan, claims, hold))
        signal.signal(signal.SIGUSR2, submitit_handler)
        if held and claims.left():
            print(f"optlab job {holder}: time limit: runs held; requeued", flush=True)
            signal.raise_signal(signal.SIGUSR2)  # submitit: checkpoint() and requeue
        elif plan.get("continues") and self._last(claims):
            print(f"optlab job {holder}: the submission's runs are through; going on", flush=True)
            folder = leases.submissions_dir(store) / self.submission
            pickle.loads((folder / CONTINUATION).read_bytes())()
        return f"{holder}: {len(claims.ended)} runs ended"

    def _last(self, claims: Claims) -> bool:
        """Whether this job is the one to go on: every run of the submission has reached
        its end or its rung, no other job holds one, and no other job went on before."""
        if claims.left():
            return False
        held = leases.read_all(claims.store)
        if any(held.get(r.run_id) is not None and held[r.run_id].live for r in claims.runs):
            return False
        marker = leases.submissions_dir(claims.store) / self.submission / "continued"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        return True

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue: the same job again (its runs resume from their checkpoints)."""
        import submitit  # in the job, which submitit is running

        return submitit.helpers.DelayedSubmission(self)


async def _train(store: Path, plan: dict[str, Any], claims: Claims, hold: Path) -> bool:
    """Train what the job can take until nothing is left or the time limit's signal came;
    whether it came."""
    loop = asyncio.get_running_loop()
    slots = node_slots(plan, len(claims.runs))
    pool = LocalPool(
        slots,
        store,
        stall_timeout=float(plan["stall_timeout"]),
        task_extra=lambda run, slot: extra(store, run, slot, hold),
        data_dir=Path(plan["data_dir"]) if plan.get("data_dir") else None,
    )
    came = asyncio.Event()

    def time_limit() -> None:
        came.set()
        hold.parent.mkdir(parents=True, exist_ok=True)
        hold.touch()  # the runs training hold at their epoch's end
        pool.halt()

    loop.add_signal_handler(signal.SIGUSR2, time_limit)
    renewing = asyncio.create_task(_renew(claims))
    try:
        await pool.run(claims, lambda event: _sink(store, claims, came, event))
    finally:
        renewing.cancel()
        loop.remove_signal_handler(signal.SIGUSR2)
        for run_id in list(claims.mine):
            claims.let_go(run_id)
    return came.is_set()


def node_slots(plan: dict[str, Any], runs: int) -> list[Slot]:
    """The slots of this node: every GPU the job was given (``per_gpu`` workers each), or
    ``workers`` CPU workers."""
    gpus = "all" if plan.get("gpus_per_node") else "none"
    return LocalExecutor.slots(gpus, int(plan["per_gpu"]), plan.get("workers"), runs)


def extra(store: Path, run: PlannedRun, slot: Slot, hold: Path) -> dict[str, Any]:
    """What the worker is told beside the run: its checkpoint folder, the epoch it may
    resume from (its journal's last checkpoint), its recorded thread count, the hold file."""
    found = progress(read_journal(journal_path(store, run.run_id)))
    stop_at = run.entry.get("stop_at")  # a rung of successive halving
    return {
        "checkpoint_dir": run.entry.get("checkpoint_dir"),
        "resume_upto": found.checkpoint if found else 0,
        "threads": (found.threads if found else None) or run.entry.get("threads") or slot.threads,
        "hold_file": str(hold),
        **({"stop_at": stop_at} if stop_at is not None else {}),
        **({"past_rung": True} if run.entry.get("past_rung") else {}),
    }


def _sink(store: Path, claims: Claims, came: asyncio.Event, event: dict[str, Any]) -> None:
    kind, run_id = event.get("type"), event.get("run_id")
    if event.get("origin") == "pool" and kind == Event.FAILED and not came.is_set():
        # A worker that died or stalled: journaled here, as the worker could not.
        with open_journal(journal_path(store, run_id), fresh=False, cut=True) as journal:
            write_events(journal, [event])
    if kind in (Event.FINISHED, Event.FAILED, Event.DIVERGED, Event.HELD, Event.PAUSED):
        if kind != Event.HELD and (kind != Event.FAILED or not came.is_set()):
            claims.ended.add(run_id)
        claims.let_go(run_id)


async def _renew(claims: Claims) -> None:
    while True:
        await asyncio.sleep(claims.poll)
        lost = await asyncio.to_thread(
            leases.renew, claims.store, sorted(claims.mine), claims.holder
        )
        for run_id in lost:  # renewed too late: another job took the run over
            print(f"optlab job {claims.holder}: the lease of run {run_id} was lost", flush=True)
            claims.mine.discard(run_id)
