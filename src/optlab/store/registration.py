"""Registering a study: its blocks, runs and memberships, the file's matrix size, and the
states of runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from optlab.states import State
from optlab.store.schema import add_config_columns, config_columns, refresh_runs_view, table_columns
from optlab.store.writer import as_text, bulk_insert


def matrix_runs(con: duckdb.DuckDBPyConnection, study: str) -> int | None:
    """The size of the study file's matrix when what was run of it is a part of it (None
    when it is not recorded: a whole study, or a store from before it was)."""
    has = con.execute(
        "select count(*) from information_schema.columns where table_name = 'studies' "
        "and column_name = 'matrix_runs' and table_catalog = current_database()"
    ).fetchone()[0]
    if not has:
        return None
    row = con.execute("select matrix_runs from studies where study = ?", [study]).fetchone()
    return row[0] if row else None


# ---- writes -------------------------------------------------------------------------------


def register_study(
    con: duckdb.DuckDBPyConnection,
    study: Any,
    plans: list[Any],
    store: Path,
    matrix: set[str] | None = None,
) -> set[str]:
    """Record the study and its runs; runs already in the store keep their state.

    ``matrix``: the run ids of the study file as written (without ``--set``); by default
    this expansion's. A part of that matrix (``--set seeds=[1]``, a block) adds to what was
    run of it before under the study's name, from the same file text: the study is the
    union. Anything else (an edited file, a ``--set epochs=1`` trial) makes the study exactly
    this expansion: the runs of the earlier version stay in the store but no longer count
    for it. Returns the earlier runs the study keeps beside this expansion's.
    """
    axes = {p.name: p.axes for p in plans}
    runs = [r for p in plans for r in p.runs]
    ids = {r.run_id for r in runs}
    before = con.execute("select source from studies where study = ?", [study.name]).fetchone()
    part = before is not None and before[0] == study.source and (matrix is None or ids <= matrix)
    carried: set[str] = set()
    if part:
        carried = {
            r
            for (r,) in con.execute(
                "select run_id from memberships where study = ?", [study.name]
            ).fetchall()
            if r not in ids and (matrix is None or r in matrix)
        }
    # The matrix's size, when the study is a part of it (status: "4 of the file's 8").
    size = len(matrix) if matrix is not None and ids <= matrix else None
    con.execute(
        "insert into studies (study, file, description, source, axes, created_at, updated_at, "
        "matrix_runs) values (?, ?, ?, ?, ?, now(), now(), ?) on conflict (study) do update "
        "set file = excluded.file, description = excluded.description, "
        "source = excluded.source, axes = excluded.axes, updated_at = now(), "
        "matrix_runs = excluded.matrix_runs",
        [study.name, study.file, study.description, study.source, json.dumps(axes), size],
    )
    changed = add_runs(con, runs)
    con.execute(
        "delete from memberships where study = ? and run_id not in (select unnest(?::varchar[]))",
        [study.name, [*ids, *carried]],
    )
    if changed:
        refresh_runs_view(con)
    return carried


def add_runs(con: duckdb.DuckDBPyConnection, runs: list[Any]) -> bool:
    """Record ``runs`` (RunSpecs) as pending where the store lacks them, and as members of
    their studies' blocks. True when the runs view gained columns (refresh it)."""
    # The seeds of a cell share its config (and axes) object: each is flattened and
    # serialised once, not once a seed.
    flat = _each_once([r.config for r in runs], config_columns)
    changed = add_config_columns(con, list(flat.values()))
    if runs:
        # A key that is None in every run gets its column when a value first shows up.
        have = table_columns(con, "run_state")
        all_cols = sorted({c for row in flat.values() for c in row if c in have})
        text = [c for c in all_cols if have[c] == "VARCHAR"]

        def columns(config: dict[str, Any]) -> tuple[str, list[Any]]:
            row = flat[id(config)]
            values = {**row, **{c: as_text(row.get(c)) for c in text}}
            return json.dumps(config), [values.get(c) for c in all_cols]

        cells = _each_once([r.config for r in runs], columns)
        # One run id may come from two blocks (the same config): its first row is stored,
        # and its membership is the last block's, as a statement per row would leave them.
        first: dict[str, list[Any]] = {}
        for r in runs:
            if r.run_id not in first:
                config, values = cells[id(r.config)]
                log = f"runs/{r.run_id}/log.txt"  # in the store's runs folder
                first[r.run_id] = [r.run_id, r.seed, State.PENDING, config, log, *values]
        bulk_insert(
            con,
            "insert into run_state",
            ("run_id", "seed", "status", "config", "log_path", *all_cols),
            list(first.values()),
            computed={"created_at": "now()"},
            tail="on conflict (run_id) do nothing",
        )
        combos = _each_once([r.axes for r in runs], json.dumps)
        last = {
            r.run_id: [r.study, r.run_id, r.block, r.position, combos[id(r.axes)]] for r in runs
        }
        bulk_insert(
            con,
            "insert into memberships",
            ("study", "run_id", "block", "position", "axes"),
            list(last.values()),
            tail="on conflict (study, run_id) do update set block = excluded.block, "
            "position = excluded.position, axes = excluded.axes",
        )
    return changed


def _each_once(objects: list[Any], fn: Any) -> dict[int, Any]:
    """``fn`` of each distinct object (by identity: the seeds of a cell share theirs)."""
    out: dict[int, Any] = {}
    for obj in objects:
        if id(obj) not in out:
            out[id(obj)] = fn(obj)
    return out


def states(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, str]:
    if not run_ids:
        return {}
    rows = con.execute(
        "select run_id, status from run_state where run_id in (select unnest(?::varchar[]))",
        [run_ids],
    ).fetchall()
    return dict(rows)
