"""Who writes a store, and whether it is still alive.

One `optlab run` (or `rm`, `rebuild`, `merge`) writes a store at a time: it holds an
exclusive lock on a file beside the store's real path (``optlab.duckdb.lock``; a symlink or
another relative path to the same store finds the same lock, on any host that mounts the
folder), and one on a file named after the store file's identity (device and inode) in this
host's temporary folder, which a hard link or a bind mount of the file, under any name,
finds too. The lock file also says who holds it: pid,
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
import tempfile
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


def identity_lock_path(store: Path) -> Path | None:
    """This host's lock for the store file itself (None while there is no file yet)."""
    try:
        st = os.stat(store)
    except OSError:
        return None
    return Path(tempfile.gettempdir()) / "optlab-locks" / f"{st.st_dev}-{st.st_ino}.lock"


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
    return _writer_in(lock_path(store))


def _writer_in(path: Path) -> Writer | None:
    try:
        text = path.read_text().strip()
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
    """The held locks; ``beat`` refreshes the heartbeat (and may name the session)."""

    def __init__(
        self,
        fds: list[int],
        command: str,
        store: Path,
        held: contextlib.ExitStack,
        identity: bool,
    ):
        self.fds, self.command = fds, command
        self.store, self._held, self._identity = store, held, identity
        self.info: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "session": None,
            "study": None,
            "command": command,
        }

    def claim_file(self) -> None:
        """Take the lock on the store file's identity, once the file exists: a store that
        did not exist when the writer started has no other name yet, but a hard link made
        to it while this writer runs must find this writer."""
        if self._identity:
            return
        same_file = identity_lock_path(self.store)
        if same_file is None:
            return
        fd = self._held.enter_context(_locked(self.store, same_file, required=False))
        if fd is not None:
            self.fds.append(fd)
        self._identity = True
        self.beat()

    def beat(self, **info: Any) -> None:
        self.info.update(info, heartbeat=time.time())
        data = json.dumps(self.info).encode()[: _RECORD - 1].ljust(_RECORD - 1) + b"\n"
        for fd in self.fds:
            with contextlib.suppress(OSError):  # a full disk must not stop the writer here
                os.pwrite(fd, data, 0)


@contextlib.contextmanager
def writer_lock(store: Path, command: str = "run") -> Iterator[WriterLock]:
    with contextlib.ExitStack() as held:
        fds = [held.enter_context(_locked(store, lock_path(store), required=True))]
        same_file = identity_lock_path(store)
        if same_file is not None:
            fd = held.enter_context(_locked(store, same_file, required=False))
            if fd is not None:
                fds.append(fd)
        lock = WriterLock(fds, command, store, held, same_file is not None)
        lock.beat()
        yield lock


@contextlib.contextmanager
def _locked(store: Path, path: Path, required: bool) -> Iterator[int | None]:
    """An exclusive lock on ``path``; a lock that is not ``required`` (this host's identity
    lock) is skipped when its folder cannot be made or written."""
    try:
        if not required and not path.parent.is_dir():
            path.parent.mkdir(exist_ok=True)
            os.chmod(path.parent, 0o1777)  # shared by every user of the host, as /tmp is
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if not required:
            yield None
            return
        raise StoreError(
            f"{store}: cannot create the lock file {path}: {e.strerror or e}; "
            "give a --store in a folder you can write to"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _writer_in(path)
            who = f" ({holder.describe()}, optlab {holder.command})" if holder else ""
            raise StoreError(
                f"{store}: another optlab process{who} is writing to this store"
                f"{'' if required else ' (through another name for the same file)'}; "
                "wait for it; to run studies side by side, give them to one `optlab run "
                "A.toml B.toml`, or use another --store and `optlab merge` it later"
            ) from None
        except OSError as e:
            raise StoreError(f"{store}: cannot lock {path}: {e.strerror or e}") from None
        try:
            yield fd
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # a clean end: nobody is writing
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
