"""The relay between a remote executor and its worker processes, with no cluster engine
in it: on each node a :class:`WorkerHost` keeps a warm ``python -m optlab.training.worker``
and hands over its lines (and the checkpoint and weight files they name, when checkpoints
travel); on this machine a :class:`Relay` per run journals each batch of its events here
(one fsync) before the coordinator sees them, keeps shipped files beside the store and
names them as the store does. The Ray executor is one user; another engine (Slurm, say)
would be another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from optlab.atomic import write_atomic
from optlab.events import decode, encode, open_journal, write_events
from optlab.execution.devices import Slot
from optlab.execution.executors.pool import Worker, signal_group, start_worker
from optlab.execution.preparing import prepare
from optlab.locations import journal_path, log_path, record_event, roots
from optlab.states import Event
from optlab.training.worker import FULL

NOT_JOURNALED = ("heartbeat", "ready", "disk_full")
SHIPPED = ('"type":"checkpoint"', '"type":"finished"')
BATCH = 2000  # most lines one poll returns


class WorkerHost:
    """One slot on a node: a warm optlab worker process, the lines it reports (with the files
    they name, when those must travel), its logs and scratch files. What a remote executor
    runs on each node (as a Ray actor, say); it imports nothing of the cluster engine."""

    def __init__(
        self,
        label: str,
        threads: int,
        gpu: bool,
        data_dir: str | None,
        datasets: list[dict[str, Any]],
        session: str,
        ship: bool,
        unique_hosts: bool = True,
    ):
        self.label, self.threads, self.gpu = label, threads, gpu
        self.unique_hosts = unique_hosts
        self.datasets, self.ship = datasets, ship
        # A node's own data folder ($OPTLAB_DATA where its `ray start` ran), else the driver's.
        self.data_dir = os.environ.get("OPTLAB_DATA") or data_dir or "data"
        root = Path(os.environ.get("OPTLAB_SCRATCH") or tempfile.gettempdir())
        self.scratch = root / f"optlab-{session}" / label.replace("/", "-")
        self.proc: Worker | None = None
        self.lines: asyncio.Queue | None = None
        self.idle: dict[str, asyncio.Event] = {}  # run_id -> the worker is done with it
        self.node = ""
        self._watch: asyncio.Task | None = None

    async def start_on(self, node: str) -> dict[str, Any]:
        """Prepare the datasets on this node and start the worker; the node's name, and
        ``error`` when it cannot run this study."""
        self.node = node
        info = {"node": self.node}
        try:
            await asyncio.to_thread(prepare, self.datasets, self.data_dir)
            self.scratch.mkdir(parents=True, exist_ok=True)
        except Exception as e:  # noqa: BLE001 - reported once, by node, with its reason
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return {**info, "error": f"cannot prepare the datasets in {self.data_dir}: {first}"}
        await self._start_worker()
        return info

    async def _start_worker(self) -> None:
        slot = Slot(f"{self.label}@{self.node}", None, self.threads)
        env = {**os.environ, **slot.env()}
        if self.gpu:  # Ray chose this actor's GPU and set CUDA_VISIBLE_DEVICES for it
            env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.proc = await start_worker(sys.executable, env, self.scratch / "worker.log")
        self.lines = asyncio.Queue()
        asyncio.get_running_loop().create_task(self._read(self.proc, self.lines))

    async def _read(self, proc: Worker, lines: asyncio.Queue) -> None:
        """The worker's lines, each with the file it names when that file must travel."""
        while True:
            line = await proc.stdout.readline()
            if line.startswith(b'{"type":"idle"'):
                done = self.idle.get(decode(line)["run_id"])
                if done is not None:
                    done.set()
                continue
            if not line:
                for done in self.idle.values():
                    done.set()
            attached = None
            if line and self.ship and any(k.encode() in line for k in SHIPPED):
                event = decode(line)
                path = event.get(
                    {"checkpoint": "path", "finished": "weights"}.get(event["type"], "")
                )
                if path:
                    with contextlib.suppress(OSError):
                        attached = await asyncio.to_thread(Path(path).read_bytes)
            await lines.put((line, attached))
            if not line:
                return

    async def submit(self, task: dict[str, Any], files: dict[str, bytes]) -> None:
        """Start a run: its journal and log here, its checkpoints here too when shipped
        (with the files it resumes from)."""
        if self.proc is None or self.proc.returncode is not None:
            await self._start_worker()
        run_id = task["run_id"]
        self.idle[run_id] = asyncio.Event()
        task = {
            **task,
            "journal": str(self.scratch / "journals" / f"{run_id}.jsonl"),
            "log": str(self.scratch / "logs" / f"{run_id}.log"),
            "data_dir": str(Path(self.data_dir).resolve()),  # this node's
        }
        (self.scratch / "logs").mkdir(parents=True, exist_ok=True)
        if self.ship:
            folder = self.scratch / "checkpoints" / run_id
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for name, data in files.items():
                write_atomic(folder / name, data)
            task["checkpoint_dir"] = str(folder)
        self.proc.stdin.write((encode(task) + "\n").encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self.proc.stdin.drain()  # a dead worker shows as the end of its lines

    async def poll(self, timeout: float) -> list[tuple[bytes, bytes | None]]:
        """The worker's lines so far (waiting up to ``timeout`` for the first); an empty
        line is the worker's end."""
        try:
            first = await asyncio.wait_for(self.lines.get(), timeout)
        except TimeoutError:
            return []
        got = [first]
        while got[-1][0] and len(got) < BATCH and not self.lines.empty():
            got.append(self.lines.get_nowait())
        return got

    async def exit_code(self) -> int | None:
        return await self.proc.wait() if self.proc is not None else None

    async def take_log(self, run_id: str, wait: float = 60.0) -> bytes:
        """The run's log on this node, once the worker is done with the run; then its files
        here are removed."""
        done = self.idle.get(run_id)
        if done is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), wait)
            self.idle.pop(run_id, None)
        log = self.scratch / "logs" / f"{run_id}.log"
        try:
            data = log.read_bytes()
        except OSError:
            data = b""
        log.unlink(missing_ok=True)
        (self.scratch / "journals" / f"{run_id}.jsonl").unlink(missing_ok=True)
        shutil.rmtree(self.scratch / "checkpoints" / run_id, ignore_errors=True)
        return data

    async def kill_worker(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            signal_group(self.proc, signal.SIGKILL)

    async def stop(self, grace: float = 5.0) -> None:
        """End the worker (SIGTERM, then SIGKILL) and remove this slot's scratch files."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            signal_group(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                await self.kill_worker()
        shutil.rmtree(self.scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.scratch.parent.rmdir()  # the session's folder, once every slot is gone


class Relay:
    """One run's events from its node: files written and paths made the driver's, each
    batch journaled here (one fsync) before the coordinator sees it."""

    def __init__(
        self,
        store: Path,
        run_id: str,
        folder: Path | None,
        keep: int,
        ship: bool,
        reached: dict[str, int],
        poll: Callable[[float], Awaitable[list[tuple[bytes, bytes | None]]]],
        take_log: Callable[[str], Awaitable[bytes]],
    ):
        self.store, self.run_id, self.folder, self.keep = store, run_id, folder, keep
        self.ship, self.reached = ship, reached  # reached: run id -> last epoch reported
        self.poll, self.take_log = poll, take_log
        self.buffer: deque[bytes] = deque()
        self.journal = journal_path(store, run_id)

    async def read(self, timeout: float) -> bytes:
        if not self.buffer:
            got = await self.poll(timeout)
            if not got:
                raise TimeoutError
            self.buffer.extend(self.receive(got))
        return self.buffer.popleft()

    def receive(self, got: list[tuple[bytes, bytes | None]]) -> list[bytes]:
        lines, journaled = [], []
        for line, attached in got:
            if not line:
                lines.append(b"")
                break
            try:
                event = decode(line)
            except ValueError:
                continue
            if event.get("type") in NOT_JOURNALED:
                lines.append(line)
                continue
            # The journal names files as the store does (see optlab.locations).
            event = record_event(self.localize(event, attached), roots(self.store))
            encoded = encode(event)
            journaled.append(event)
            lines.append(encoded.encode())
        if journaled:
            try:
                self.write_journal(journaled)
            except OSError as e:
                if e.errno not in FULL:
                    raise
                # Not written here, so not sent on: the run stops and stays resumable.
                return [
                    encode(
                        {
                            "type": Event.DISK_FULL,
                            "run_id": self.run_id,
                            "time": time.time(),
                            "error": f"cannot write the run's journal {self.journal}: {e.strerror}",
                        }
                    ).encode()
                ]
        return lines

    def localize(self, event: dict[str, Any], attached: bytes | None) -> dict[str, Any]:
        """Track the run's progress; with shipped checkpoints, keep the files here and name
        them by their place here."""
        kind = event["type"]
        if kind == Event.STARTED:
            self.reached[self.run_id] = 0
        elif kind in (Event.RESUMED, Event.EPOCH):
            self.reached[self.run_id] = event["epoch"]
        if not self.ship or self.folder is None:
            return event
        folder = self.folder
        if kind in (Event.STARTED, Event.RESUMED):
            event = {**event, "checkpoint_dir": str(folder)}
            upto = event["epoch"] if kind == Event.RESUMED else 0
            for p in checkpoint_files(folder):
                if checkpoint_epoch(p) > upto:
                    p.unlink(missing_ok=True)
            if kind == Event.RESUMED:
                event["checkpoint"] = str(folder / Path(event["checkpoint"]).name)
        elif kind == Event.CHECKPOINT and attached is not None:
            path = folder / Path(event["path"]).name
            write_atomic(path, attached)
            for old in checkpoint_files(folder)[self.keep :]:
                old.unlink(missing_ok=True)
            event = {**event, "path": str(path)}
        elif kind == Event.FINISHED:
            if event.get("weights") and attached is not None:
                path = folder / Path(event["weights"]).name
                write_atomic(path, attached)
                event = {**event, "weights": str(path)}
            for p in checkpoint_files(folder):
                p.unlink(missing_ok=True)
        elif kind == Event.DIVERGED:
            for p in checkpoint_files(folder):
                p.unlink(missing_ok=True)
        return event

    def write_journal(self, events: list[dict[str, Any]]) -> None:
        """Started: a fresh journal; anything else is appended (after a torn last line)."""
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        first = events[0]["type"]
        with open_journal(self.journal, fresh=first == "started", cut=first == "resumed") as f:
            write_events(f, events)

    async def fetch_log(self) -> None:
        """Bring the run's log from its node and add it to the log here."""
        data = await self.take_log(self.run_id)
        if data:
            path = log_path(self.store, self.run_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                f.write(data)


def checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint files, newest first."""
    if not folder.is_dir():
        return []
    return sorted(folder.glob("epoch-*.ckpt"), key=checkpoint_epoch, reverse=True)


def checkpoint_epoch(path: Path) -> int:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return -1
