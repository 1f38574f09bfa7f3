"""Sessions: one row per `optlab run`, with its heartbeat (how `status` tells a live writer
from a dead one).
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import duckdb


def start_session(
    con: duckdb.DuckDBPyConnection,
    session_id: str,
    study: str | list[str],
    workers: int,
    planned: int,
    executor: str = "local",
) -> None:
    """A session row for each study the run serves (``SESSION``, ``SESSION.1``, ...: one
    pool running several studies is live for each of them)."""

    # The caller holds the store's writer lock: a session still open is one whose writer died.
    con.execute("update sessions set ended_at = heartbeat_at where ended_at is null")
    studies = [study] if isinstance(study, str) else study
    for k, name in enumerate(studies):
        con.execute(
            "insert into sessions (session_id, study, pid, hostname, started_at, "
            "heartbeat_at, ended_at, workers, planned, executor) "
            "values (?, ?, ?, ?, now(), now(), null, ?, ?, ?)",
            [
                session_id if k == 0 else f"{session_id}.{k}",
                name,
                os.getpid(),
                socket.gethostname(),
                workers,
                planned,
                executor,
            ],
        )


def heartbeat(
    con: duckdb.DuckDBPyConnection,
    session_id: str,
    ended: bool = False,
    nodes: dict[str, int] | None = None,
) -> None:
    """The session lives (and, with ``nodes``, runs slots on these nodes now)."""
    extra = ", ended_at = now()" if ended else ""
    params: list[Any] = [session_id]
    if nodes is not None:
        extra += ", nodes = ?"
        params.insert(0, json.dumps(nodes, sort_keys=True))
    con.execute(  # the session's row for each study it serves
        f"update sessions set heartbeat_at = now(){extra} "
        "where session_id = ? or starts_with(session_id, ? || '.')",
        [*params, session_id],
    )
