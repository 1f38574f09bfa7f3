"""The event writer: a batch of worker events applied as a few bulk statements (started,
resumed, epochs, probes, endings), idempotent so a replayed journal changes nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np

from optlab import locations
from optlab.events import EPOCH_FIELDS
from optlab.states import ENDINGS, Event, State
from optlab.store.schema import PROVENANCE_COLUMNS

STATE_CHANGES = ("started", "resumed", "rung", *ENDINGS)
RUNG_COLUMNS = (
    "run_id",
    "epoch",
    "decision",
    "metric",
    "value",
    "rank",
    "of",
    "keep",
    "rule",
    "decided_at",
)


@dataclass
class _Segment:
    """A run's events up to and including its next state change."""

    epochs: list[list[Any]] = field(default_factory=list)
    probes: list[list[Any]] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None  # the last one: each sets the same columns
    change: dict[str, Any] | None = None


def apply_events(
    con: duckdb.DuckDBPyConnection,
    events: list[dict[str, Any]],
    roots: dict[str, str] | None = None,
) -> None:
    """Write a batch of worker events. Idempotent: a journal may be applied again. With the
    store's ``roots``, the files events name are recorded relative to the store's folders
    when they lie inside (journals from before that was done name them absolute).

    Events of different runs touch different rows, so they commute; a run's own events
    keep their order. The batch is written in layers: layer i holds every run's rows up to
    its i-th state change, then those changes, each kind for all runs in one statement.
    A batch of many runs' lives (recovery, rebuild, a busy coordinator) then costs a few
    statements a layer instead of a few a run."""
    runs: dict[str, list[_Segment]] = {}
    journaled: dict[str, float] = {}
    for ev in events:
        if roots is not None:
            ev = locations.record_event(ev, roots)
        kind, run_id = ev["type"], ev.get("run_id")
        if not run_id:
            continue
        if ev.get("origin") != "pool" and ev.get("time"):
            journaled[run_id] = max(journaled.get(run_id, 0.0), ev["time"])
        segments = runs.get(run_id)
        if segments is None:  # (setdefault would build a segment for every event)
            segments = runs[run_id] = [_Segment()]
        segment = segments[-1]
        if kind == Event.EPOCH:
            segment.epochs.append([run_id, *(ev.get(f) for f in EPOCH_FIELDS)])
        elif kind == Event.PROBE:
            segment.probes += [
                [run_id, ev.get("epoch"), ev.get("step"), ev["probe"], key, value]
                for key, value in (ev.get("values") or {}).items()
            ]
        elif kind == Event.CHECKPOINT:  # touches no rows: it need not end the segment
            segment.checkpoint = ev
        elif kind in STATE_CHANGES:
            segment.change = ev
            segments.append(_Segment())
    for depth in range(max((len(s) for s in runs.values()), default=0)):
        _apply_layer(con, [segs[depth] for segs in runs.values() if depth < len(segs)])
    if journaled:  # one statement for the batch, not one per run
        with_rows(
            con,
            ("run_id", "at"),
            [list(kv) for kv in journaled.items()],
            "update run_state set journal_time = greatest(coalesce(journal_time, 0), j.at) "
            "from optlab_bulk_rows j where run_state.run_id = j.run_id",
        )


def _apply_layer(con: duckdb.DuckDBPyConnection, layer: list[_Segment]) -> None:
    """Rows first (a run's rows land before its next state change), then checkpoints, then
    the state changes, one statement per kind."""
    epochs = [row for seg in layer for row in seg.epochs]
    if epochs:
        _insert_epochs(con, epochs)
    probes = [row for seg in layer for row in seg.probes]
    if probes:
        bulk_insert(con, "insert into probes", PROBE_COLUMNS, probes)
    checkpoints = [
        [s.checkpoint["run_id"], s.checkpoint["epoch"], s.checkpoint["path"]]
        for s in layer
        if s.checkpoint
    ]
    if checkpoints:
        with_rows(
            con,
            ("run_id", "epoch", "path"),
            checkpoints,
            "update run_state set checkpoint_epoch = c.epoch, checkpoint_path = c.path "
            "from optlab_bulk_rows c where run_state.run_id = c.run_id",
        )
    changes: dict[str, list[dict[str, Any]]] = {}
    for seg in layer:
        if seg.change is not None:
            changes.setdefault(seg.change["type"], []).append(seg.change)
    if "started" in changes:
        _apply_started(con, changes["started"])
    if "resumed" in changes:
        _apply_resumed(con, changes["resumed"])
    if "rung" in changes:
        _apply_rungs(con, changes["rung"])
    ended = [
        [ev["run_id"], status, *_ending(ev)]
        for kind, status in ENDINGS.items()
        for ev in changes.get(kind, [])
    ]
    ended += [
        [
            ev["run_id"],
            State.STOPPED,
            ev.get("reason"),
            ev.get("time") or time.time(),
            ev.get("elapsed"),
        ]
        for ev in changes.get("rung", [])
        if ev.get("decision") == "stop"
    ]
    if ended:
        finish_all(con, ended)
    # the worker removes the checkpoints of a run that ended (not of one that failed)
    kept = [
        [
            ev["run_id"],
            ev.get("weights"),
            (ev.get("rule") or "non_finite") if ev["type"] == Event.DIVERGED else None,
        ]
        for kind in (Event.FINISHED, Event.DIVERGED)
        for ev in changes.get(kind, [])
    ]
    if kept:
        with_rows(
            con,
            ("run_id", "weights", "rule"),
            kept,
            "update run_state set checkpoint_epoch = null, checkpoint_path = null, "
            "weights_path = k.weights, diverged_by = k.rule "
            "from optlab_bulk_rows k where run_state.run_id = k.run_id",
        )


def _apply_rungs(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> None:
    """Halving decisions: one row each (a later decision at the same rung replaces it); a
    run that waits for its group is pending until it is decided."""
    rows = {
        (ev["run_id"], ev["epoch"]): [
            ev["run_id"],
            ev["epoch"],
            ev["decision"],
            ev.get("metric"),
            ev.get("value"),
            ev.get("rank"),
            ev.get("of"),
            ev.get("keep"),
            ev.get("rule"),
            ev.get("time") or time.time(),
        ]
        for ev in events
    }
    bulk_insert(con, "insert or replace into rungs", RUNG_COLUMNS, list(rows.values()))
    waiting = [[ev["run_id"]] for ev in events if ev["decision"] == "wait"]
    if waiting:
        with_rows(
            con,
            ("run_id",),
            waiting,
            "update run_state set status = 'pending' from optlab_bulk_rows w "
            "where run_state.run_id = w.run_id",
        )


def _ending(ev: dict[str, Any]) -> tuple[str | None, float, float | None]:
    """(error, time, elapsed) of an event that ends an attempt."""
    at = ev.get("time") or time.time()
    if ev["type"] == Event.DISK_FULL:
        return f"stopped: disk full ({ev.get('error')})", at, None
    if ev["type"] == Event.HELD:
        return f"held at epoch {ev.get('epoch')}: the session's time was up", at, ev.get("elapsed")
    return ev.get("error"), at, ev.get("elapsed")


PROBE_COLUMNS = ("run_id", "epoch", "step", "probe", "key", "value")


def _insert_epochs(con: duckdb.DuckDBPyConnection, rows: list[list[Any]]) -> None:
    bulk_insert(con, "insert or replace into epochs", ("run_id", *EPOCH_FIELDS), rows)


def with_rows(
    con: duckdb.DuckDBPyConnection, columns: tuple[str, ...], rows: list[list[Any]], sql: str
) -> None:
    """Run ``sql`` with ``rows`` as the view ``optlab_bulk_rows``: one array per column
    (None is NULL), so many rows take one statement."""

    data = {c: np.array([row[i] for row in rows], dtype=object) for i, c in enumerate(columns)}
    con.register("optlab_bulk_rows", data)
    try:
        con.execute(sql)
    finally:
        con.unregister("optlab_bulk_rows")


def bulk_insert(
    con: duckdb.DuckDBPyConnection,
    head: str,
    columns: tuple[str, ...],
    rows: list[list[Any]],
    *,
    computed: dict[str, str] | None = None,
    tail: str = "",
) -> None:
    """Insert many rows as one scan of column arrays: about 100 times the rows a second of
    ``executemany``, which runs one statement a row (BENCHMARKS.md). None is NULL;
    ``computed`` adds columns from SQL expressions, ``tail`` ends the statement (``on
    conflict ...``)."""
    computed = computed or {}
    names = ", ".join(f'"{c}"' for c in (*columns, *computed))
    values = ", ".join([*(f'"{c}"' for c in columns), *computed.values()])
    with_rows(con, columns, rows, f"{head} ({names}) select {values} from optlab_bulk_rows {tail}")


def as_text(value: Any) -> Any:
    """A value bound for a VARCHAR column, spelled as DuckDB casts it (true, not True)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _apply_started(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> None:
    """Runs start from scratch: whatever an earlier attempt left is dropped."""
    _ensure_runs(con, events)
    ids = [ev["run_id"] for ev in events]
    con.execute("delete from epochs where run_id in (select unnest(?::varchar[]))", [ids])
    con.execute("delete from probes where run_id in (select unnest(?::varchar[]))", [ids])
    with_rows(
        con,
        ("run_id", "at"),
        [[ev["run_id"], ev.get("time", time.time())] for ev in events],
        "update run_state set started_at = to_timestamp(s.at), resumed_from = null, "
        "checkpoint_epoch = null, checkpoint_path = null, weights_path = null "
        "from optlab_bulk_rows s where run_state.run_id = s.run_id",
    )
    _attempt(con, events)


def _apply_resumed(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> None:
    """Runs continue from their checkpoints at ``epoch``: the rows after it are dropped (the
    resumed runs report them again)."""
    _ensure_runs(con, events)
    rows = [
        [ev["run_id"], ev["epoch"], ev.get("checkpoint"), ev.get("time", time.time())]
        for ev in events
    ]
    columns = ("run_id", "epoch", "path", "at")
    for table in ("epochs", "probes"):
        with_rows(
            con,
            columns,
            rows,
            f"delete from {table} t using optlab_bulk_rows r "
            "where t.run_id = r.run_id and t.epoch > r.epoch",
        )
    with_rows(
        con,
        columns,
        rows,
        "update run_state set resumed_from = r.epoch, checkpoint_epoch = r.epoch, "
        "checkpoint_path = r.path, started_at = coalesce(started_at, to_timestamp(r.at)) "
        "from optlab_bulk_rows r where run_state.run_id = r.run_id",
    )
    _attempt(con, events)


def _attempt(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> None:
    columns = (
        "run_id",
        "at",
        "counts",  # 0 for a resume past a rung of successive halving: not another attempt
        "precision_used",
        "input_shape",
        "num_classes",
        "checkpoint_dir",
        *PROVENANCE_COLUMNS,
    )
    rows = []
    for ev in events:
        prov, shape = ev.get("provenance") or {}, ev.get("input_shape")
        rows.append(
            [
                ev["run_id"],
                ev.get("time") or time.time(),
                0 if ev.get("past_rung") else 1,
                ev.get("precision_used"),
                json.dumps(shape) if shape else None,
                ev.get("num_classes"),
                ev.get("checkpoint_dir"),
                *(prov.get(c) for c in PROVENANCE_COLUMNS),
            ]
        )
    sets = ", ".join(f'"{c}" = a."{c}"' for c in PROVENANCE_COLUMNS)
    with_rows(
        con,
        columns,
        rows,
        "update run_state set status = 'running', finished_at = null, error = null, "
        "wall_seconds = null, train_seconds = null, "
        "attempts = attempts + (coalesce(journal_time, 0) < a.at and a.counts = 1)::integer, "
        "precision_used = a.precision_used, "
        "input_shape = coalesce(a.input_shape, run_state.input_shape), "
        "num_classes = coalesce(a.num_classes, run_state.num_classes), "
        "checkpoint_dir = coalesce(a.checkpoint_dir, run_state.checkpoint_dir), "
        f"{sets} from optlab_bulk_rows a where run_state.run_id = a.run_id",
    )


def _ensure_runs(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> None:
    """Runs the store does not know (rebuilding from journals): added from the configs
    their journals carry."""
    rows = [
        [ev["run_id"], ev.get("seed"), json.dumps(ev["config"]), ev.get("time", time.time())]
        for ev in events
        if ev.get("config") is not None
    ]
    if rows:
        with_rows(
            con,
            ("run_id", "seed", "config", "at"),
            rows,
            "insert into run_state (run_id, seed, status, config, created_at) "
            "select r.run_id, r.seed, 'pending', r.config, to_timestamp(r.at) "
            "from optlab_bulk_rows r on conflict (run_id) do nothing",
        )


def finish_all(con: duckdb.DuckDBPyConnection, rows: list[list[Any]]) -> None:
    """Rows of (run_id, status, error, at, elapsed). ``elapsed`` (from the worker) counts
    every attempt's running time; without it, the wall time since the run was first
    started."""
    with_rows(
        con,
        ("run_id", "status", "error", "at", "elapsed"),
        rows,
        "update run_state set status = f.status, error = f.error, "
        "finished_at = to_timestamp(f.at), "
        "wall_seconds = coalesce(f.elapsed, epoch(to_timestamp(f.at) - started_at)), "
        "train_seconds = t.seconds "
        "from optlab_bulk_rows f left join (select run_id, sum(seconds) as seconds from epochs "
        "where run_id in (select run_id from optlab_bulk_rows) group by run_id) t "
        "on t.run_id = f.run_id where run_state.run_id = f.run_id",
    )
