"""Recovery: what the journals hold that the store does not (a crash of anything), re-ingested;
resume points; the checkpoint folders a store owns.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import duckdb

from optlab import leases, locations
from optlab.events import Progress, ends_run, progress, read_journal
from optlab.states import Event, State, ending
from optlab.store.files import artefacts_dir, journal_path
from optlab.store.writer import apply_events, finish_all, with_rows


def recover(
    con: duckdb.DuckDBPyConnection,
    store: Path,
    run_ids: list[str] | None = None,
    live: frozenset[str] | None = None,
) -> list[str]:
    """Re-ingest the journals that hold more than the store: those of runs it still shows as
    pending or running (left by a crash or Ctrl-C), and those of interrupted or failed runs
    whose journal has events newer than the store's (a later attempt cut off before its first
    write). Runs without a final event become 'interrupted', except a failed or interrupted
    run whose journal only adds the tail of the attempt that ended so (no new start): that
    keeps its ending. Returns their ids.

    Every `optlab run` calls this over the study's unfinished runs, which may be most of a
    100,000-run study: only the runs with a folder beside the store are read, and what they
    need is written in a few statements for all of them, not a few per run.

    Runs still training elsewhere (a Slurm job holds their lease, see :mod:`optlab.leases`;
    ``live`` when the caller has read them) have their events so far written and stay
    running."""
    if live is None:
        live = leases.live_ids(store)
    rows = con.execute(
        "select run_id, status, coalesce(journal_time, 0) from run_state "
        "where status in ('pending', 'running', 'interrupted', 'failed')"
    ).fetchall()
    wanted = set(run_ids) if run_ids is not None else None
    try:
        with os.scandir(artefacts_dir(store)) as entries:
            present = {e.name for e in entries}
    except FileNotFoundError:
        present = set()
    recovered: list[str] = []
    replay: list[dict[str, Any]] = []
    unfinished: list[list[Any]] = []
    lost: list[str] = []  # shown as running, but nothing was journaled: not started after all
    for run_id, status, seen in rows:
        if wanted is not None and run_id not in wanted:
            continue
        events = read_journal(journal_path(store, run_id)) if run_id in present else []
        if not events:
            if status == State.RUNNING and run_id not in live:
                lost.append(run_id)
            continue
        # A run training in a job now, folded in before: only what it journaled since.
        if status in (State.INTERRUPTED, State.FAILED) or (
            status == State.RUNNING and run_id in live
        ):
            newer = [e for e in events if (e.get("time") or 0) > seen]
            if not newer:
                continue
            if not any(e["type"] in (Event.STARTED, Event.RESUMED) for e in newer):
                # The tail of the attempt the store has already ended: its worker journaled
                # it, then was killed (stalled, or died) before sending it. Its rows are
                # kept, and so is the ending, unless the tail holds the run's own.
                replay.extend(newer)
                recovered.append(run_id)
                continue
        replay.extend(events)
        last = events[-1]
        if not ends_run(last) and run_id not in live:
            at = last.get("time") or time.time()
            unfinished.append(
                [run_id, State.INTERRUPTED, "interrupted before it finished", at, None]
            )
        recovered.append(run_id)
    if lost:
        con.execute(
            "update run_state set status = 'pending' "
            "where run_id in (select unnest(?::varchar[])) and status = 'running'",
            [lost],
        )
    apply_events(con, replay, locations.roots(store))  # runs' events commute
    if unfinished:
        finish_all(con, unfinished)
    return recovered


def journal_progress(store: Path, run_id: str) -> Progress | None:
    """From a run's journal alone: its progress, or None when it has no events. For status,
    while the store may lag behind (a writer killed before it wrote what was journaled)."""
    return progress(read_journal(journal_path(store, run_id)))


def paused_at_rungs(store: Path, run_ids: list[str]) -> dict[str, tuple[int, str | None]]:
    """Runs whose latest attempt ended paused at a rung of successive halving (before a
    crash of the coordinator, or a Ctrl-C): run id -> (the rung's epoch, the decision
    journaled for it there, or None). Such a run need not be started again to arrive at
    the rung once more: it is there, with its checkpoint."""
    out: dict[str, tuple[int, str | None]] = {}
    for run_id in run_ids:
        at: tuple[int, str | None] | None = None
        for ev in read_journal(journal_path(store, run_id)):
            kind = ev.get("type")
            if kind == Event.PAUSED:
                at = (ev["epoch"], None)
            elif kind == Event.RUNG and at is not None and ev.get("epoch") == at[0]:
                at = (at[0], ev.get("decision"))
            elif kind in (Event.STARTED, Event.RESUMED) or ending(ev) is not None:
                at = None
        if at is not None:
            out[run_id] = at
    return out


def resume_points(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, dict]:
    """Per run: the newest epoch it may resume from, its checkpoint folder and recorded
    thread count. A checkpoint is used only when its file and its journaled event both exist
    (a kill between the two leaves a file the journal never named: what `optlab status`
    names as the resume point is where the run resumes), and only within the leading
    epochs the store holds without a gap (a checkpoint after them cannot be resumed from)."""
    if not run_ids:
        return {}
    rows = con.execute(
        "select r.run_id, r.checkpoint_dir, r.threads, coalesce(e.n, 0), coalesce(e.last, 0), "
        "coalesce(r.checkpoint_epoch, 0) "
        "from run_state r left join (select run_id, count(*) as n, max(epoch) as last "
        "from epochs group by run_id) e using (run_id) "
        "where r.run_id in (select unnest(?::varchar[]))",
        [run_ids],
    ).fetchall()
    return {
        run_id: {
            "checkpoint_dir": folder,
            "threads": threads,
            "resume_upto": min(int(last), int(journaled)) if n == last else 0,
        }
        for run_id, folder, threads, n, last, journaled in rows
    }


def set_checkpoint_dirs(con: duckdb.DuckDBPyConnection, dirs: dict[str, str]) -> None:
    if not dirs:
        return
    with_rows(
        con,
        ("run_id", "dir"),
        [list(kv) for kv in dirs.items()],
        "update run_state set checkpoint_dir = d.dir from optlab_bulk_rows d "
        "where run_state.run_id = d.run_id",
    )


def own_checkpoint_root(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """Note a checkpoint root this store's runs write under (its own folder, or a
    ``--checkpoint-dir``): `optlab rm` removes run folders only under the store's own roots,
    never under another store's."""
    roots = checkpoint_roots(con)
    if root not in roots:
        con.execute(
            "insert or replace into meta values ('checkpoint_roots', ?)",
            [json.dumps([*roots, root])],
        )


def checkpoint_roots(con: duckdb.DuckDBPyConnection) -> list[str]:
    row = con.execute("select value from meta where key = 'checkpoint_roots'").fetchone()
    return json.loads(row[0]) if row else []
