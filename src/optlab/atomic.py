"""Files that are either wholly old or wholly new after a crash (no torch here)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, payload: bytes) -> None:
    """Write aside (a hidden ``.NAME.tmp-PID``), fsync, rename into place, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
