"""The local executor: an asyncio pool of long-lived worker processes.

Each slot keeps one worker (``python -m optlab.training.worker``, forked from a warm fork
server: see ``forked``) with its own environment (``CUDA_VISIBLE_DEVICES``, thread counts),
in its own process group, and feeds it one run at a time. A worker that dies fails only its
current run; the slot starts a new one. Cancelling the pool (Ctrl-C) sends SIGTERM to every
worker, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from optlab import locations
from optlab.events import TERMINAL, decode, encode
from optlab.execution.devices import Slot
from optlab.execution.executors import forked
from optlab.execution.executors.work import WorkQueue
from optlab.locations import journal_path, log_path, runs_dir
from optlab.states import Event
from optlab.study.expand import RunSpec
from optlab.study.schema import PLUGIN_SLOTS, PROBES_KEY

Sink = Callable[[dict[str, Any]], None]
Worker = asyncio.subprocess.Process | forked.ForkedWorker  # pid, stdin, stdout, returncode, wait()
LINE_LIMIT = 16 * 1024 * 1024


TaskExtra = Callable[[RunSpec, Slot], dict[str, Any]]
SILENT_AFTER = 15.0  # seconds without a word from a worker before it is reported
CHECK_EVERY = 1.0


class LocalPool:
    def __init__(
        self,
        slots: list[Slot],
        store: Path,
        python: str = sys.executable,
        stall_timeout: float = 600.0,
        task_extra: TaskExtra | None = None,
        data_dir: Path | None = None,
    ):
        self.slots, self.store, self.python = slots, store, python
        self.data_dir = data_dir  # where the workers find datasets: sent with each task
        self.stall_timeout = stall_timeout
        self.task_extra = task_extra or (lambda spec, slot: {})
        self.stopping = False  # no new runs (the disk is full)
        self._procs: set[Worker] = set()
        self.broken = Broken()
        self.work = WorkQueue()

    async def run(self, specs: list[RunSpec] | WorkQueue, sink: Sink) -> None:
        work = specs if isinstance(specs, WorkQueue) else WorkQueue(specs)
        if self.stopping:
            work.close()
        self.work = work
        try:
            await asyncio.gather(*(self._slot_loop(slot, work, sink) for slot in self.slots))
        finally:
            await self.stop()

    def worker_log(self, slot: Slot) -> Path:
        """What a worker prints outside a run (its start-up, say)."""
        return runs_dir(self.store) / "workers" / (slot.label.replace("/", "-") + ".log")

    async def _start(self, slot: Slot) -> Worker:
        env = {**os.environ, **slot.env()}
        proc = await start_worker(self.python, env, self.worker_log(slot), warm=True)
        self._procs.add(proc)
        return proc

    async def _slot_loop(self, slot: Slot, work: WorkQueue, sink: Sink) -> None:
        proc: Worker | None = None
        while not self.stopping and (spec := await work.take()) is not None:
            if self.stopping:  # halted while it waited
                work.release()
                break
            try:
                proc = await self._one(slot, proc, spec, sink)
            finally:
                work.release()
        if proc is not None:
            proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            self._procs.discard(proc)

    async def _one(
        self, slot: Slot, proc: Worker | None, spec: RunSpec, sink: Sink
    ) -> Worker | None:
        """One run's attempt on ``slot``'s worker (started when there is none); the worker
        to keep, or None when it ended."""
        if self.broken.skip(sink, spec):
            return proc
        if proc is None:
            proc = await self._start(slot)
        task = {
            **spec.task(),
            "journal": str(journal_path(self.store, spec.run_id)),
            "log": str(log_path(self.store, spec.run_id)),
            "roots": locations.roots(self.store),  # the files events name, as recorded
            **({"data_dir": str(self.data_dir)} if self.data_dir is not None else {}),
            **self.task_extra(spec, slot),
        }
        sink(
            {
                "type": "assigned",
                "run_id": spec.run_id,
                "worker": slot.label,
                "time": time.time(),
            }
        )
        try:
            proc.stdin.write((encode(task) + "\n").encode())
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died between runs; read_events sees EOF and reports it
        ended = await pump(
            lambda t, p=proc: asyncio.wait_for(p.stdout.readline(), t),
            self.broken.watch(sink, spec),
            slot.label,
            spec.run_id,
            self.stall_timeout,
        )
        if ended == "ended":
            return proc
        if ended == "stalled":
            signal_group(proc, signal.SIGKILL)
        code = await proc.wait()
        self._procs.discard(proc)
        if ended == "disk_full":
            self.halt()
            return None
        why = stall_message(slot.label, ended, code, self.stall_timeout)
        worker_failed(
            sink, self.store, spec.run_id, why, f"{self.worker_log(slot)} and the run's log"
        )
        return None

    def halt(self) -> None:
        """Start no more runs."""
        self.stopping = True
        self.work.close()

    async def stop(self, grace: float = 5.0) -> None:
        procs = [p for p in self._procs if p.returncode is None]
        for p in procs:
            signal_group(p, signal.SIGTERM)
        if procs:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in procs], timeout=grace
            )
            for p in procs:
                if p.returncode is None:
                    signal_group(p, signal.SIGKILL)
            for fut in pending:
                with contextlib.suppress(Exception):
                    await fut
        self._procs.clear()


Read = Callable[[float], Awaitable[bytes]]


async def pump(read: Read, sink: Sink, worker: str, run_id: str, stall_timeout: float) -> str:
    """Forward a worker's events for one run until its terminal one ("ended"), the worker's
    end ("died"), a full disk ("disk_full"), or ``stall_timeout`` seconds without progress
    ("stalled"). ``read(timeout)`` gives the next line (b"" at the end) or raises
    TimeoutError; every executor reads its workers through this."""
    heard = moved = time.monotonic()
    progress, started, reported = None, False, False
    while True:
        try:
            line = await read(CHECK_EVERY)
        except TimeoutError:
            now = time.monotonic()
            if now - heard > SILENT_AFTER and not reported:
                reported = True
                sink({"type": "silent", "run_id": run_id, "worker": worker, "seconds": now - heard})
            if now - heard > stall_timeout or (started and now - moved > stall_timeout):
                return "stalled"
            continue
        if not line:
            return "died"
        heard = time.monotonic()
        if reported:
            reported = False
            sink({"type": "silent", "run_id": run_id, "worker": worker, "seconds": 0})
        try:
            event = decode(line)
        except ValueError:
            continue  # not an event: something wrote to the channel; ignore it
        kind = event["type"]
        if kind == Event.HEARTBEAT:
            if event.get("progress") != progress:
                progress, moved = event.get("progress"), heard
            continue
        if kind in (Event.READY, Event.IDLE):
            continue
        moved = heard
        started = started or kind in (Event.STARTED, Event.RESUMED)
        sink(event)
        if kind == Event.DISK_FULL:
            return "disk_full"
        if kind in TERMINAL:
            return "ended"


class Broken:
    """Plugin tables whose build raised in a run: the runs that share one (with the same
    dataset) are failed without being started, naming the plugin and the run that showed
    it, instead of each failing alike in a worker. Datasets are left out: their builds can
    depend on the node."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}  # key -> why

    @staticmethod
    def _key(kind: str, table: Any, dataset: Any) -> str:

        return json.dumps([kind, table, dataset], sort_keys=True)

    def note(self, event: dict[str, Any], spec: RunSpec | None) -> None:
        broken = event.get("broken")
        if event["type"] != Event.FAILED or not broken or spec is None:
            return
        if broken["kind"] == "dataset":
            return
        key = self._key(broken["kind"], broken["table"], spec.config.get("dataset"))
        self.seen.setdefault(key, f"{event.get('error')} (in run {spec.run_id})")

    def why_not(self, spec: RunSpec) -> str | None:
        if not self.seen:
            return None

        dataset = spec.config.get("dataset")
        tables = [(kind, spec.config.get(slot)) for slot, kind in PLUGIN_SLOTS.items()]
        tables += [("probe", t) for t in spec.config.get(PROBES_KEY) or []]
        for kind, table in tables:
            why = self.seen.get(self._key(kind, table, dataset))
            if why is not None:
                return f"not started: {why}"
        return None

    def watch(self, sink: Sink, spec: RunSpec) -> Sink:
        """``sink``, noting the run's build failure on the way."""

        def forward(event: dict[str, Any]) -> None:
            self.note(event, spec)
            sink(event)

        return forward

    def skip(self, sink: Sink, spec: RunSpec) -> bool:
        """Fail ``spec`` without starting it when it shares a broken table."""
        why = self.why_not(spec)
        if why is None:
            return False
        sink(
            {
                "type": Event.FAILED,
                "run_id": spec.run_id,
                "time": time.time(),
                "origin": "pool",
                "error": why,
            }
        )
        return True


def stall_message(worker: str, ended: str, code: int | None, stall_timeout: float) -> str:
    return (
        f"worker {worker} stalled: no progress for {stall_timeout:.0f} s (stopped or "
        "hung), so it was killed"
        if ended == "stalled"
        else f"worker {worker} died ({describe_exit(code)}) during the run"
    )


def worker_failed(sink: Sink, store: Path, run_id: str, why: str, see: str) -> None:
    """The run failed with its worker (dead, stalled, lost): said in its log and reported."""
    note_in_log(log_path(store, run_id), why)
    sink(
        {
            "type": Event.FAILED,
            "run_id": run_id,
            "time": time.time(),
            "origin": "pool",
            "error": f"{why}; see {see}",
        }
    )


def note_in_log(path: Path, why: str) -> None:
    """A worker that dies without a word (a segfault, os._exit) leaves at least this."""
    with contextlib.suppress(OSError), open(path, "a") as f:
        f.write(f"\noptlab: {why}\n")


async def start_worker(python: str, env: dict[str, str], log: Path, warm: bool = False) -> Worker:
    """``python -m optlab.training.worker`` in its own process group: tasks on stdin, events on
    stdout, anything else it prints appended to ``log``. ``warm``: forked from a process that
    has imported torch already (see ``forked``), when ``python`` is this interpreter."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if warm and python == sys.executable:
        return await forked.start(env, log, LINE_LIMIT)
    with open(log, "ab") as stderr:
        return await asyncio.create_subprocess_exec(
            python,
            "-m",
            "optlab.training.worker",
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
            limit=LINE_LIMIT,
        )


def signal_group(proc: Worker, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # a forked worker before its setsid(): no group of its own yet
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, sig)
    except PermissionError:
        pass


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
