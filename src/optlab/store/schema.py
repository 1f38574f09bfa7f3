"""The store's schema: tables, views and migrations, and the config columns (one per resolved
config value) the runs view shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb

from optlab import locations
from optlab.states import STATES  # noqa: F401  (the store's states: states.py declares them)
from optlab.store import views
from optlab.study import paths
from optlab.study.schema import PLUGIN_SLOTS
from optlab.study.steps import start_lr_sql

# The tables whose rows belong to one run each (keyed by run_id), beside run_state and the
# memberships: what `rm` deletes, `merge` brings, `rebuild` counts and `export` writes.
RUN_TABLES = ("epochs", "probes", "rungs")


SCHEMA_VERSION = 3  # 3: paths inside the store's folders are recorded relative to them


SCHEMA = """
create table if not exists meta (key varchar primary key, value varchar);
create table if not exists studies (
    study varchar primary key, file varchar, description varchar, source varchar,
    axes json, created_at timestamp, updated_at timestamp);
create table if not exists run_state (
    run_id varchar primary key, seed integer, status varchar, config json,
    created_at timestamp, started_at timestamp, finished_at timestamp,
    wall_seconds double, train_seconds double, attempts integer default 0,
    optlab_version varchar, git_sha varchar, torch_version varchar, python_version varchar,
    device varchar, threads integer, hostname varchar, pid integer,
    cuda_visible_devices varchar, worker varchar, precision_used varchar,
    error varchar, log_path varchar);
create table if not exists memberships (
    study varchar, run_id varchar, block varchar, position integer, axes json,
    primary key (study, run_id));
create table if not exists epochs (
    run_id varchar, epoch integer, step bigint, samples bigint, sfo bigint, epoch_lr double,
    epoch_batch_size integer, train_loss double, train_acc double, test_loss double,
    test_acc double, seconds double, eval_seconds double, val_loss double, val_acc double,
    probe_seconds double, sfo_full_batches bigint, comm_rounds bigint,
    primary key (run_id, epoch));
create table if not exists probes (
    run_id varchar, epoch integer, step bigint, probe varchar, key varchar, value double);
create table if not exists rungs (
    run_id varchar, epoch integer, decision varchar, metric varchar, value double,
    rank integer, of integer, keep integer, rule varchar, decided_at double,
    primary key (run_id, epoch));
create table if not exists sessions (
    session_id varchar primary key, study varchar, pid integer, hostname varchar,
    started_at timestamp, heartbeat_at timestamp, ended_at timestamp, workers integer,
    planned integer);
"""


# run_state columns of schema 2: checkpoints, weights, what the model needs to be rebuilt,
# and the time of the last journaled event the store holds (for recovery).
RUN_STATE_ADDED = (
    ("checkpoint_dir", "varchar"),
    ("checkpoint_epoch", "integer"),
    ("checkpoint_path", "varchar"),
    ("resumed_from", "integer"),
    ("weights_path", "varchar"),
    ("input_shape", "json"),
    ("num_classes", "integer"),
    ("journal_time", "double"),
    ("diverged_by", "varchar"),
    ("files_store", "varchar"),  # merged with --link: the store whose folders hold its files
)


FIXED_RUN_COLUMNS = ("study", "block", "position", "axes")


PROVENANCE_COLUMNS = (
    "optlab_version",
    "git_sha",
    "torch_version",
    "python_version",
    "device",
    "threads",
    "hostname",
    "pid",
    "cuda_visible_devices",
    "worker",
)


# Short names for the hyperparameters asked about most, when the study has them.
ALIASES = {
    "lr": "optimizer_lr",
    "wd": "optimizer_weight_decay",
    "batch_size": "batch_schedule_batch_size",
}


def ensure_schema(con: duckdb.DuckDBPyConnection, store: Path | None = None) -> None:
    """Make or bring up to date the tables and views. A store of schema 2 or older is given
    store-relative paths (``store``: where it is now)."""
    con.execute(SCHEMA)
    row = con.execute("select value from meta where key = 'schema_version'").fetchone()
    old = int(row[0]) if row and str(row[0]).isdigit() else None
    # Columns added since the first stores were made.
    for col in ("val_loss", "val_acc", "probe_seconds"):
        con.execute(f"alter table epochs add column if not exists {col} double")
    for col in ("sfo_full_batches", "comm_rounds"):
        con.execute(f"alter table epochs add column if not exists {col} bigint")
    for col, kind in RUN_STATE_ADDED:
        con.execute(f"alter table run_state add column if not exists {col} {kind}")
    # The executor of each session, and the nodes (name -> slots) its workers run on.
    for col in ("executor", "nodes"):
        con.execute(f"alter table sessions add column if not exists {col} varchar")
    # The size of the study file's matrix, when what was run of it is a part of it.
    con.execute("alter table studies add column if not exists matrix_runs integer")
    if old is not None and old < 3 and store is not None:
        _relative_paths(con, store)
    con.execute("insert or replace into meta values ('schema_version', ?)", [str(SCHEMA_VERSION)])
    refresh_runs_view(con)
    views.create(con)


def _relative_paths(con: duckdb.DuckDBPyConnection, store: Path) -> None:
    """Absolute paths into the store's own folders (how schema 2 recorded them) become
    relative to those folders, and every log path is the run's own."""
    con.execute("update run_state set log_path = 'runs/' || run_id || '/log.txt'")
    for role, root in locations.roots(store).items():
        for col in ("checkpoint_dir", "checkpoint_path", "weights_path"):
            con.execute(
                f"update run_state set {col} = ? || substr({col}, ?) "
                f"where {col} = ? or starts_with({col}, ?)",
                [role, len(root) + 1, root, root + os.sep],
            )


# ---- config columns -----------------------------------------------------------------------


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """Flatten a resolved config to columns: ``optimizer.lr`` -> ``optimizer_lr``, and a
    plugin's name under the slot's own name (``optimizer`` = 'sgd')."""
    out = {}
    for path, value in paths.flatten(config).items():
        out[config_column(path)] = json.dumps(value) if isinstance(value, list | dict) else value
    return out


def config_column(path: str) -> str:
    slot, _, rest = path.partition(".")
    if rest == "name" and slot in PLUGIN_SLOTS:
        return slot
    return paths.column(path)


def _sql_type(value: Any) -> str:
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "BIGINT"
    if isinstance(value, float):
        return "DOUBLE"
    return "VARCHAR"


def _widen(old: str, new: str) -> str:
    if old == new:
        return old
    if {old, new} == {"BIGINT", "DOUBLE"}:
        return "DOUBLE"
    return "VARCHAR"


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "select column_name, data_type from information_schema.columns where table_name = ? "
        "and table_catalog = current_database() and table_schema = 'main'",
        [table],
    ).fetchall()
    return dict(rows)


def add_config_columns(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> bool:
    have = table_columns(con, "run_state")
    wanted: dict[str, str] = {}
    for row in rows:
        for col, value in row.items():
            if value is None:
                continue
            t = _sql_type(value)
            wanted[col] = _widen(wanted.get(col, t), t)
    changed = False
    for col, t in wanted.items():
        if col not in have:
            con.execute(f'alter table run_state add column "{col}" {t}')
            changed = True
        elif have[col] != t and _widen(have[col], t) != have[col]:
            con.execute(f'alter table run_state alter "{col}" type {_widen(have[col], t)}')
            changed = True
    return changed


def refresh_runs_view(con: duckdb.DuckDBPyConnection) -> None:

    cols = table_columns(con, "run_state")
    aliases = "".join(
        f', r."{src}" as {alias}'
        for alias, src in ALIASES.items()
        if src in cols and alias not in cols and alias != "lr"
    )
    # lr: the LR a run starts from, after the batch scaling rule (lr_scaling); the
    # optimizer's lr as written is lr_nominal (and optimizer_lr).
    if "optimizer_lr" in cols and "lr" not in cols:
        aliases += f", {start_lr_sql()} as lr"
        if "lr_nominal" not in cols:
            aliases += ', r."optimizer_lr" as lr_nominal'
    con.execute(
        "create or replace view runs as select m.study, m.block, m.position, m.axes, r.*"
        f"{aliases} from memberships m join run_state r using (run_id)"
    )
