"""Workers forked from a warm process, so that a pool imports torch once, not once a worker.

A worker's start is mostly its imports (torch alone is about 2 s of CPU). The pool asks
multiprocessing's fork server, started once per coordinator with the worker's modules
already imported, for each worker: a fork is a few milliseconds. The fork server is
started by exec (never a fork of the coordinator, its threads or its event loop), imports
torch without touching CUDA, and forks; each worker then sets up what an exec'd one
would have: its own session (process group), the slot's environment (CUDA_VISIBLE_DEVICES,
threads), the coordinator's current folder, the task channel on stdin, the event channel on
stdout and its log on stderr. From there it is `python -m optlab.training.worker`.

What a fork cannot change: libraries read some variables when they load (OpenMP's and
MKL's thread counts), and they loaded in the fork server. The worker sets its thread count
through torch instead (``OPTLAB_THREADS``), which is what decides a run's numbers.

If the fork server dies, its workers die with it (they ask the kernel to kill them when
their parent goes), and the next worker starts a new fork server.
"""

from __future__ import annotations

import asyncio
import fcntl
import multiprocessing
import os
import sys
from multiprocessing import process as mp_process
from multiprocessing import reduction
from pathlib import Path
from typing import Any

from optlab.training import worker

# What the fork server imports before its first fork: the worker, the engine (torch), and
# torch._dynamo, which building any torch optimizer imports (1.4 s of CPU a worker). None
# of them touches CUDA.
PRELOAD = ["optlab.training.worker", "optlab.training.engine", "torch._dynamo", __name__]
_context: Any = None


def _forkserver() -> Any:
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _context = ctx
    return _context


class _Fd:
    """A file descriptor the forked worker inherits: sent to the fork server with the
    request (SCM_RIGHTS), an int again in the worker."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _inherited, (reduction.DupFd(self.fd),)


def _inherited(dup: Any) -> int:
    return dup.detach()


def _above_stdio(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def _serve(tasks: int, events: int, log: str, env: dict[str, str], cwd: str) -> None:
    """In the forked worker: become what ``python -m optlab.training.worker`` would be."""
    os.setsid()  # its own process group, as start_new_session gives an exec'd worker
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    moved = [_above_stdio(fd) for fd in (tasks, events, log_fd)]
    for fd in (tasks, events, log_fd):
        os.close(fd)
    for target, fd in enumerate(moved):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # multiprocessing gave the child /dev/null for stdin; these are the channels now.
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", closefd=False)  # noqa: SIM115
    worker.main()


class ForkedWorker:
    """A forked worker with what the pool uses of an asyncio subprocess: ``pid``,
    ``stdin`` (a StreamWriter), ``stdout`` (a StreamReader), ``returncode``, ``wait()``."""

    def __init__(self, process: Any, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader):
        self.pid: int = process.pid
        self.stdin, self.stdout = stdin, stdout
        self.returncode: int | None = None
        self._process = process
        loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[int] = loop.create_future()
        loop.add_reader(process.sentinel, self._on_end)

    def _on_end(self) -> None:
        # The fork server writes the exit status to the sentinel (EOF if it died itself).
        asyncio.get_running_loop().remove_reader(self._process.sentinel)
        code = self._process.exitcode
        self.returncode = 255 if code is None else code
        self._process.close()
        if not self._ended.done():
            self._ended.set_result(self.returncode)

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)


async def start(env: dict[str, str], log: Path, limit: int) -> ForkedWorker:
    """A worker forked from the warm fork server (started on the first call)."""
    tasks_r, tasks_w = os.pipe()
    events_r, events_w = os.pipe()
    process = _forkserver().Process(
        target=_serve,
        args=(_Fd(tasks_r), _Fd(events_w), str(log), env, os.getcwd()),
        name="optlab-worker",
    )
    try:
        # Blocks until the fork server has forked (its first start imports torch): off the loop.
        await asyncio.to_thread(process.start)
    except BaseException:
        for fd in (tasks_w, events_r):
            os.close(fd)
        raise
    finally:
        os.close(tasks_r)
        os.close(events_w)
    # The pool ends its workers itself; multiprocessing would join them at exit and wait
    # forever on one whose stdin this process still holds.
    mp_process._children.discard(process)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(events_r, "rb", 0)
    )
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop), os.fdopen(tasks_w, "wb", 0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return ForkedWorker(process, writer, reader)
