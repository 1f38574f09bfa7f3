"""Who writes a store, and whether it is still alive.

One `optlab run` (or `rm`, `rebuild`) writes a store at a time: it holds an exclusive lock on
a file beside the store's real path (``optlab.duckdb.lock``; a symlink or another relative
path to the same store finds the same lock). The lock file also says who holds it: pid,
host, session and a heartbeat refreshed every second by the writer, outside the database,
so a reader can tell a live writer (even one waiting on a busy store) from one that was
killed: on the same host the pid must exist; on another host the heartbeat must be fresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optlab.errors import StoreError

LIVE_SECONDS = 30.0  # a writer on another host whose heartbeat is older is taken as gone
_RECORD = 512  # the record is padded to this size and rewritten in place


def real_store(store: Path) -> Path:
    return Path(os.path.realpath(store))


def lock_path(store: Path) -> Path:
    real = real_store(store)
    return real.with_name(real.name + ".lock")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


@dataclass(frozen=True)
class Writer:
    pid: int
    host: str
    session: str | None
    study: str | None
    heartbeat: float
    command: str = "run"

    def age(self, now: float | None = None) -> float:
        return (now or time.time()) - self.heartbeat

    def alive(self, now: float | None = None) -> bool:
        if self.host == socket.gethostname():
            return pid_alive(self.pid)
        return self.age(now) < LIVE_SECONDS

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


def read_writer(store: Path) -> Writer | None:
    """The writer the lock file names, or None when nobody holds it (or it cannot be read)."""
    try:
        text = lock_path(store).read_text().strip()
        raw = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    try:
        return Writer(
            int(raw["pid"]),
            str(raw["host"]),
            raw.get("session"),
            raw.get("study"),
            float(raw["heartbeat"]),
            str(raw.get("command", "run")),
        )
    except (KeyError, TypeError, ValueError):
        return None


class WriterLock:
    """The held lock; ``beat`` refreshes the heartbeat (and may name the session)."""

    def __init__(self, fd: int, command: str):
        self.fd, self.command = fd, command
        self.info: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "session": None,
            "study": None,
            "command": command,
        }

    def beat(self, **info: Any) -> None:
        self.info.update(info, heartbeat=time.time())
        data = json.dumps(self.info).encode()[: _RECORD - 1].ljust(_RECORD - 1) + b"\n"
        with contextlib.suppress(OSError):  # a full disk must not stop the writer here
            os.pwrite(self.fd, data, 0)


@contextlib.contextmanager
def writer_lock(store: Path, command: str = "run") -> Iterator[WriterLock]:
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(
            f"{store}: cannot create the lock file {path}: {e.strerror or e}; "
            "give a --store in a folder you can write to"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_writer(store)
            who = f" ({holder.describe()}, optlab {holder.command})" if holder else ""
            raise StoreError(
                f"{store}: another optlab process{who} is writing to this store; "
                "wait for it or use another --store"
            ) from None
        except OSError as e:
            raise StoreError(f"{store}: cannot lock {path}: {e.strerror or e}") from None
        lock = WriterLock(fd, command)
        lock.beat()
        try:
            yield lock
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # a clean end: nobody is writing
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
