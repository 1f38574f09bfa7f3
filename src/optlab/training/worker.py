"""A long-lived worker process: reads tasks (JSON lines) on stdin, trains, reports events.

The pool starts it as ``python -m optlab.training.worker``. Events go to the pool through the
original stdout, which the worker keeps for itself; everything else the process or its
libraries print goes to the current run's log file. Each event is first appended to the
run's journal (flushed and fsynced), then sent: what a worker has reported survives a
crash of the worker or of the coordinator, and ``optlab run`` re-ingests it on restart.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from optlab.events import encode, open_journal
from optlab.locations import record_event
from optlab.plugins.plugin import study_folder
from optlab.plugins.registry import default_registry
from optlab.states import Event
from optlab.study import plugin_files
from optlab.version import __version__


def git_sha() -> str | None:
    """The commit of optlab's own source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parents[1]  # the optlab package
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(device: Any) -> dict[str, Any]:
    import torch  # torch: only where a run trains; the readers never import it

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (platform.processor() or platform.machine() or "cpu")
    )
    return {
        "optlab_version": __version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": f"{device.type}: {name}",
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "worker": os.environ.get("OPTLAB_WORKER"),
    }


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
HEARTBEAT_SECONDS = 2.0
EXIT_DISK_FULL = 75


class Channel:
    """Journal first, then the pipe to the coordinator.

    The journal is started afresh when a run starts and appended to when it resumes (a torn
    last line from a crash is cut first), so a resumed run's journal holds every attempt.
    The pipe is shared with the heartbeat thread, hence the lock.
    """

    def __init__(self, events: TextIO, journal_path: str, lock: threading.Lock):
        self.events, self.path, self.lock = events, journal_path, lock
        self.journal: TextIO | None = None

    def _open(self, resuming: bool) -> TextIO:
        return open_journal(self.path, fresh=not resuming, cut=resuming)

    def emit(self, event: dict[str, Any]) -> None:
        line = encode({**event, "time": time.time()}) + "\n"
        try:
            if self.journal is None:
                self.journal = self._open(event["type"] == Event.RESUMED)
            self.journal.write(line)
            self.journal.flush()
            os.fsync(self.journal.fileno())
        except OSError as e:
            if e.errno in FULL:
                stop_for_full_disk(
                    self.events,
                    self.lock,
                    event.get("run_id"),
                    f"cannot write the run's journal {self.path}: {e.strerror}",
                )
            raise
        send(self.events, self.lock, line)

    def close(self) -> None:
        if self.journal is not None:
            with contextlib.suppress(OSError):
                self.journal.close()


def send(events: TextIO, lock: threading.Lock, line: str) -> None:
    try:
        with lock:
            events.write(line)
            events.flush()
    except (BrokenPipeError, ValueError):
        os._exit(3)  # the coordinator is gone; the journal has everything


def stop_for_full_disk(events: TextIO, lock: threading.Lock, run_id: str | None, why: str) -> None:
    """A full disk is not the run's fault: tell the coordinator (which stops the study and
    leaves the run resumable) and exit."""
    send(
        events,
        lock,
        encode({"type": Event.DISK_FULL, "run_id": run_id, "error": why, "time": time.time()})
        + "\n",
    )
    os._exit(EXIT_DISK_FULL)


class Heartbeat:
    """Every HEARTBEAT_SECONDS, tell the coordinator the worker lives and how far the current
    run has got (``progress`` counts training steps and evaluations): a stopped process
    sends nothing, a hung one sends the same progress."""

    def __init__(self, events: TextIO, lock: threading.Lock):
        self.events, self.lock = events, lock
        self.progress, self.run_id = 0, None
        threading.Thread(target=self._loop, daemon=True, name="heartbeat").start()

    def tick(self) -> None:
        self.progress += 1

    def _loop(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            send(
                self.events,
                self.lock,
                encode({"type": Event.HEARTBEAT, "run_id": self.run_id, "progress": self.progress})
                + "\n",
            )


def _redirect_output(log_path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_task(
    task: dict[str, Any],
    events: TextIO,
    cache: Any,
    info: dict[str, Any],
    lock: threading.Lock,
    beat: Heartbeat,
) -> None:
    import torch  # torch: only where a run trains; the readers never import it

    from optlab.training import engine  # imports torch

    try:
        Path(task["journal"]).parent.mkdir(parents=True, exist_ok=True)
        _redirect_output(task["log"])
    except OSError as e:
        if e.errno in FULL:
            stop_for_full_disk(
                events, lock, task["run_id"], f"cannot write the run's log: {e.strerror}"
            )
        raise
    channel = Channel(events, task["journal"], lock)
    threads = task.get("threads")
    if threads and cache.device.type == "cpu":
        torch.set_num_threads(threads)  # the run's own count: the same on every attempt

    roots = task.get("roots")

    def emit(event: dict[str, Any]) -> None:
        if event["type"] in (Event.STARTED, Event.RESUMED):
            event = {**event, "provenance": {**info, "threads": torch.get_num_threads()}}
        if roots:  # the journal names files as the store does: it may be read elsewhere
            event = record_event(event, roots)
        channel.emit(event)

    print(f"optlab worker {os.getpid()}: run {task['run_id']} seed {task['seed']}", flush=True)
    beat.run_id = task["run_id"]
    try:
        files = plugin_files.from_task(task.get("plugin_files") or [])
        with study_folder(task.get("study_folder")), plugin_files.use(files):
            engine.train(task, emit, cache, tick=beat.tick)
    except OSError as e:
        traceback.print_exc()
        if e.errno in FULL:
            stop_for_full_disk(events, lock, task["run_id"], f"{e.strerror}: {e.filename}")
        _failed(emit, task, e)
    except Exception as e:  # the run fails, the worker lives on
        traceback.print_exc()
        _failed(emit, task, e)
    finally:
        beat.run_id = None
        channel.close()
        sys.stdout.flush()
        sys.stderr.flush()


def _failed(emit: Any, task: dict[str, Any], e: Exception) -> None:
    first = (str(e).strip().splitlines() or [""])[0]
    event = {
        "type": Event.FAILED,
        "run_id": task["run_id"],
        "error": f"{type(e).__name__}: {first}",
    }
    if type(e).__name__ == "PluginBuildError":
        # The executor spares the other runs with this plugin table: they would fail alike.
        event["broken"] = {"kind": e.kind, "table": e.table}
    emit(event)


def _die_with_parent() -> None:
    """On Linux, exit when the coordinator dies (kill -9 included), freeing the GPU; what
    was reported is already in the journal."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, b"optlab-worker")  # PR_SET_NAME: what ps, top and tests see
        if os.getppid() == 1:  # the parent died before the call
            os._exit(3)


def main() -> None:
    _die_with_parent()
    # Slurm signals every process of a job at its time limit (submitit asks for USR2); the
    # job's own process decides what its runs do (hold at their epoch's end), not the signal.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    # Keep the real stdout for events; from here on fd 1 is a log, never the channel.
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    # A segfault or a fatal error writes its Python traceback to fd 2: the current run's log.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    import torch  # torch: only where a run trains; the readers never import it

    from optlab.training.engine import DataCache, pick_device  # imports torch

    threads = int(os.environ.get("OPTLAB_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    device = pick_device()
    cache = DataCache(default_registry(), device)
    info = provenance(device)
    lock = threading.Lock()
    send(events, lock, encode({"type": Event.READY, "run_id": None, "pid": os.getpid()}) + "\n")
    beat = Heartbeat(events, lock)
    for line in sys.stdin:
        if line.strip():
            task = json.loads(line)
            run_task(task, events, cache, info, lock, beat)
            # Done with the run's files (its log, checkpoints) until the next task.
            send(events, lock, encode({"type": Event.IDLE, "run_id": task["run_id"]}) + "\n")
    # stdin closed: the pool is done with this worker, and every event is in its journal
    # (fsynced) and sent. Skip the interpreter's teardown, which with torch (and the
    # torch._dynamo that building an optimizer imports) takes about 1.5 s of CPU a worker.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
