"""A long-lived worker process: reads tasks (JSON lines) on stdin, trains, reports events.

The pool starts it as ``python -m optlab.worker``. Events go to the pool through the
original stdout, which the worker keeps for itself; everything else the process or its
libraries print goes to the current run's log file. Each event is first appended to the
run's journal (flushed and fsynced), then sent: what a worker has reported survives a
crash of the worker or of the coordinator, and ``optlab run`` re-ingests it on restart.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

import optlab
from optlab.events import encode


def git_sha() -> str | None:
    """The commit of optlab's own source tree, when it is a git checkout."""
    here = Path(optlab.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(device: Any) -> dict[str, Any]:
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine() or "cpu")
    return {
        "optlab_version": optlab.__version__,
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


class Channel:
    """Journal first, then the pipe to the coordinator."""

    def __init__(self, events: TextIO, journal_path: str):
        self.events = events
        self.journal = open(journal_path, "w", encoding="utf-8")  # noqa: SIM115

    def emit(self, event: dict[str, Any]) -> None:
        line = encode({**event, "time": time.time()}) + "\n"
        self.journal.write(line)
        self.journal.flush()
        os.fsync(self.journal.fileno())
        try:
            self.events.write(line)
            self.events.flush()
        except BrokenPipeError:
            os._exit(3)  # the coordinator is gone; the journal has everything

    def close(self) -> None:
        self.journal.close()


def _redirect_output(log_path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_task(task: dict[str, Any], events: TextIO, cache: Any, info: dict[str, Any]) -> None:
    from optlab import engine

    Path(task["journal"]).parent.mkdir(parents=True, exist_ok=True)
    _redirect_output(task["log"])
    channel = Channel(events, task["journal"])

    def emit(event: dict[str, Any]) -> None:
        if event["type"] == "started":
            event = {**event, "provenance": info}
        channel.emit(event)

    print(f"optlab worker {os.getpid()}: run {task['run_id']} seed {task['seed']}", flush=True)
    try:
        engine.train(task, emit, cache)
    except Exception as e:  # the run fails, the worker lives on
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        emit({"type": "failed", "run_id": task["run_id"], "error": f"{type(e).__name__}: {first}"})
    finally:
        channel.close()
        sys.stdout.flush()
        sys.stderr.flush()


def _die_with_parent() -> None:
    """On Linux, exit when the coordinator dies (kill -9 included), freeing the GPU; what
    was reported is already in the journal."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call
            os._exit(3)


def main() -> None:
    _die_with_parent()
    # Keep the real stdout for events; from here on fd 1 is a log, never the channel.
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    import torch

    from optlab.engine import DataCache, pick_device
    from optlab.registry import default_registry

    threads = int(os.environ.get("OPTLAB_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    device = pick_device()
    cache = DataCache(default_registry(), device)
    info = provenance(device)
    events.write(encode({"type": "ready", "run_id": None, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if line.strip():
            import json

            run_task(json.loads(line), events, cache, info)


if __name__ == "__main__":
    main()
