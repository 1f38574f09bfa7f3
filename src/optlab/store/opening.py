"""Opening a store: read-only with retries while the writer holds it, for writing, and the one-
line errors for a store that is busy, damaged, foreign or newer.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from optlab.errors import StoreBusy, StoreError, StoreFull
from optlab.store.files import artefacts_dir, studies_record_dir
from optlab.store.schema import SCHEMA_VERSION


def _connect(path: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout
    # A reader never installs extensions (that would write under the user's home); a
    # paced one (the page's server) reads on one thread, leaving the cores to training.
    config: dict[str, Any] = {"autoinstall_known_extensions": False} if read_only else {}
    if read_only and PACE.on:
        config["threads"] = 1
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=config)
            break
        except duckdb.IOException as e:
            msg = str(e)
            if "lock" in msg.lower() and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            if "lock" in msg.lower():
                raise StoreBusy(f"{path}: busy (another process holds it); try again") from None
            raise _opening_error(path, e) from None
        except duckdb.Error as e:
            raise _opening_error(path, e) from None
        except OSError as e:
            raise StoreError(f"{path}: cannot open the store: {e.strerror or e}") from None
    try:
        _identify(con, path)
    except BaseException:
        con.close()
        raise
    return con


def _opening_error(path: Path, e: Exception) -> StoreError:
    msg = str(e)
    if "not a valid DuckDB database" in msg:
        if studies_record_dir(path).is_dir():
            return StoreError(
                f"{path}: not a DuckDB database (damaged?); `optlab rebuild "
                f"--store {path}` makes the store again from the run journals"
            )
        return StoreError(f"{path}: not a DuckDB database; give another --store")
    if is_disk_full(msg):
        return StoreFull(f"{path}: the disk is full ({_first_line(msg)})")
    return StoreError(
        f"{path}: the store is damaged or unreadable ({_first_line(msg)}); "
        f"`optlab rebuild --store {path}` makes a new one from the run journals"
    )


def _first_line(msg: str) -> str:
    return (msg.strip().splitlines() or [""])[0]


def is_disk_full(message: str) -> bool:
    lowered = message.lower()
    return any(s in lowered for s in ("no space left", "disk quota", "file too large"))


def _identify(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse a DuckDB file that is not an optlab store, or one from a newer optlab."""
    tables = {
        t
        for (t,) in con.execute(
            "select table_name from information_schema.tables where table_schema = 'main' "
            "and table_catalog = current_database()"
        ).fetchall()
    }
    if not tables:
        return  # a new, empty store
    if "meta" not in tables or "run_state" not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise StoreError(
            f"{path}: not an optlab store (a DuckDB database with tables {shown}); "
            "give another --store"
        )
    row = con.execute("select value from meta where key = 'schema_version'").fetchone()
    version = int(row[0]) if row and str(row[0]).isdigit() else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: made by a newer optlab (store schema {version}; this optlab "
            f"knows up to {SCHEMA_VERSION}); upgrade optlab to use it"
        )


class Pace:
    """A long-lived reader's manners (`optlab serve`): its reads one at a time, each on one
    thread and followed by a pause as long as it held the store (at least :data:`GAP`
    seconds), so that a writer in another process, which asks every 50 ms for half a
    second, always finds the store free in time. Off unless :meth:`start` is called."""

    GAP = 0.1

    def __init__(self) -> None:
        self.on = False
        self._lock = threading.RLock()
        self._free_at = 0.0
        self._depth = 0

    def start(self) -> None:
        self.on = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if not self.on:
            yield
            return
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                time.sleep(max(0.0, self._free_at - time.monotonic()))
            started = time.monotonic()
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    now = time.monotonic()
                    self._free_at = now + max(self.GAP, now - started)


PACE = Pace()
_OPEN = threading.local()  # this thread's read-only connection, while a `reading` holds one


@contextlib.contextmanager
def reading(
    path: Path, timeout: float = 15.0, require_runs: bool = True
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection; a user's SQL through it cannot change results. Inside
    another `reading` of the same store in this thread, that one's connection is used
    (opening a store costs about 20 ms: a page's answer opens it once, not per query)."""
    held = getattr(_OPEN, "held", None)
    if held is not None and held[0] == path:
        if require_runs:
            _require_runs(held[1], path)
        yield held[1]
        return
    with PACE.held(), _reading(path, timeout, require_runs) as con:
        _OPEN.held = (path, con)
        try:
            yield con
        finally:
            _OPEN.held = None


def _require_runs(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    has = con.execute(
        "select count(*) from information_schema.tables where table_name = 'run_state'"
    ).fetchone()[0]
    if not has:
        raise StoreError(f"{path}: the store is empty; run a study first (optlab run)")


@contextlib.contextmanager
def _reading(path: Path, timeout: float, require_runs: bool) -> Iterator[duckdb.DuckDBPyConnection]:
    if not path.exists():
        if studies_record_dir(path).is_dir():  # the file is lost, its journals are not
            raise StoreError(
                f"{path}: no store file, but its run journals and study records are in "
                f"{artefacts_dir(path)}; `optlab rebuild --store {path}` makes it again"
            )
        raise StoreError(f"{path}: no store here yet; run a study first (optlab run)")
    con = _connect(path, read_only=True, timeout=timeout)
    try:
        if require_runs:
            _require_runs(con, path)
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def writing(
    path: Path, timeout: float = 60.0, before: Any = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """One transaction, holding the file only for its duration. ``before(con)`` runs ahead
    of it (attaching another database: a failed try there would abort the transaction)."""
    con = _connect(path, read_only=False, timeout=timeout)
    try:
        if before is not None:
            before(con)
        con.execute("begin transaction")
        yield con
        con.execute("commit")
    except BaseException as e:
        with contextlib.suppress(duckdb.Error):
            con.execute("rollback")
        if isinstance(e, duckdb.Error) and is_disk_full(str(e)):
            raise StoreFull(f"{path}: the disk is full ({_first_line(str(e))})") from None
        raise
    finally:
        con.close()


def check_store(path: Path) -> None:
    """Fail early (before anything is written) if ``path`` is not a usable store."""
    if path.exists():
        if path.is_dir():
            raise StoreError(f"{path}: is a folder; --store names a file such as optlab.duckdb")
        with _connect(path, read_only=True, timeout=15.0):
            pass
        if not os.access(path, os.W_OK):
            raise StoreError(f"{path}: the store is read-only here; give another --store")
    else:
        parent = path.parent
        if not parent.is_dir():
            raise StoreError(f"{path}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise StoreError(
                f"{path}: cannot create a store in {parent} (not writable); give another --store"
            )
