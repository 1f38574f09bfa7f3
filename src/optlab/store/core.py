"""The DuckDB store: schema, the coordinator's batched writes, and read-only opening.

DuckDB lets one process hold a database file at a time, so the coordinator opens the
file only while it writes a batch, and readers open it read-only, retrying briefly
while it is busy. User-facing tables and views: ``studies``, ``runs`` (one row per study
and run, with every resolved config value as its own column), ``epochs``, ``probes``,
``sessions``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from optlab import locations
from optlab.atomic import write_atomic
from optlab.errors import StoreBusy, StoreError, StoreFull
from optlab.events import EPOCH_FIELDS, read_journal
from optlab.store import views
from optlab.study import paths
from optlab.study.schema import PLUGIN_SLOTS

STATES = ("pending", "running", "done", "failed", "diverged", "interrupted")
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


def artefacts_dir(store: Path) -> Path:
    """Run logs and journals live beside the store: ``optlab.duckdb`` -> ``optlab.runs/``."""
    return locations.runs_dir(store)


def checkpoints_dir(store: Path) -> Path:
    """Checkpoints and saved weights, by default: ``optlab.duckdb`` -> ``optlab.checkpoints/``."""
    return locations.checkpoints_dir(store)


def journal_path(store: Path, run_id: str) -> Path:
    return artefacts_dir(store) / run_id / "events.jsonl"


def log_path(store: Path, run_id: str) -> Path:
    return artefacts_dir(store) / run_id / "log.txt"


def _connect(path: Path, read_only: bool, timeout: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout
    # A reader never installs extensions (that would write under the user's home).
    config = {"autoinstall_known_extensions": False} if read_only else {}
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


@contextlib.contextmanager
def reading(
    path: Path, timeout: float = 15.0, require_runs: bool = True
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection; a user's SQL through it cannot change results."""
    if not path.exists():
        if studies_record_dir(path).is_dir():  # the file is lost, its journals are not
            raise StoreError(
                f"{path}: no store file, but its run journals and study records are in "
                f"{artefacts_dir(path)}; `optlab rebuild --store {path}` makes it again"
            )
        raise StoreError(f"{path}: no store here yet; run a study first (optlab run)")
    con = _connect(path, read_only=True, timeout=timeout)
    try:
        has = con.execute(
            "select count(*) from information_schema.tables where table_name = 'run_state'"
        ).fetchone()[0]
        if require_runs and not has:
            raise StoreError(f"{path}: the store is empty; run a study first (optlab run)")
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


def other_names(path: Path) -> str | None:
    """A note when the store file has other names (hard links): its folders go by the name
    it is given (``NAME.runs/``), or by another name in the same folder whose folders exist,
    so a rebuild or run through a name elsewhere would not see this one's journals."""
    try:
        links = os.stat(path).st_nlink
    except OSError:
        return None
    if links < 2:
        return None
    other = locations.other_name(path)
    if other is not None:
        return (
            f"{path} has {links} names (hard links); its journals and checkpoints go in "
            f"{artefacts_dir(path).name}/ and {checkpoints_dir(path).name}/, the folders of "
            f"its name {other.name}"
        )
    return (
        f"{path} has {links} names (hard links); its journals and checkpoints go in "
        f"{artefacts_dir(path).name}/ and {checkpoints_dir(path).name}/ beside this name, so "
        "use this name for it from now on (or copy the store instead of linking it)"
    )


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
    _refresh_runs_view(con)
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


def _table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "select column_name, data_type from information_schema.columns where table_name = ? "
        "and table_catalog = current_database() and table_schema = 'main'",
        [table],
    ).fetchall()
    return dict(rows)


def _add_config_columns(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]]) -> bool:
    have = _table_columns(con, "run_state")
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


def _refresh_runs_view(con: duckdb.DuckDBPyConnection) -> None:
    from optlab.study.steps import start_lr_sql

    cols = _table_columns(con, "run_state")
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
    # The seeds of a cell share its config (and axes) object: each is flattened and
    # serialised once, not once a seed.
    flat = _each_once([r.config for r in runs], config_columns)
    changed = _add_config_columns(con, list(flat.values()))
    if runs:
        # A key that is None in every run gets its column when a value first shows up.
        have = _table_columns(con, "run_state")
        all_cols = sorted({c for row in flat.values() for c in row if c in have})
        text = [c for c in all_cols if have[c] == "VARCHAR"]

        def columns(config: dict[str, Any]) -> tuple[str, list[Any]]:
            row = flat[id(config)]
            values = {**row, **{c: _as_text(row.get(c)) for c in text}}
            return json.dumps(config), [values.get(c) for c in all_cols]

        cells = _each_once([r.config for r in runs], columns)
        # One run id may come from two blocks (the same config): its first row is stored,
        # and its membership is the last block's, as a statement per row would leave them.
        first: dict[str, list[Any]] = {}
        for r in runs:
            if r.run_id not in first:
                config, values = cells[id(r.config)]
                log = f"runs/{r.run_id}/log.txt"  # in the store's runs folder
                first[r.run_id] = [r.run_id, r.seed, "pending", config, log, *values]
        _bulk_insert(
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
        _bulk_insert(
            con,
            "insert into memberships",
            ("study", "run_id", "block", "position", "axes"),
            list(last.values()),
            tail="on conflict (study, run_id) do update set block = excluded.block, "
            "position = excluded.position, axes = excluded.axes",
        )
    con.execute(
        "delete from memberships where study = ? and run_id not in (select unnest(?::varchar[]))",
        [study.name, [*ids, *carried]],
    )
    if changed:
        _refresh_runs_view(con)
    return carried


def _each_once(objects: list[Any], fn: Any) -> dict[int, Any]:
    """``fn`` of each distinct object (by identity: the seeds of a cell share theirs)."""
    out: dict[int, Any] = {}
    for obj in objects:
        if id(obj) not in out:
            out[id(obj)] = fn(obj)
    return out


def studies_record_dir(store: Path) -> Path:
    return artefacts_dir(store) / "studies"


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value).encode())


def states(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, str]:
    if not run_ids:
        return {}
    rows = con.execute(
        "select run_id, status from run_state where run_id in (select unnest(?::varchar[]))",
        [run_ids],
    ).fetchall()
    return dict(rows)


# the events that end a run's attempt, and the status each leaves
ENDINGS = {
    "finished": "done",
    "failed": "failed",
    "diverged": "diverged",
    "disk_full": "interrupted",
}
STATE_CHANGES = ("started", "resumed", *ENDINGS)


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
        if kind == "epoch":
            segment.epochs.append([run_id, *(ev.get(f) for f in EPOCH_FIELDS)])
        elif kind == "probe":
            segment.probes += [
                [run_id, ev.get("epoch"), ev.get("step"), ev["probe"], key, value]
                for key, value in (ev.get("values") or {}).items()
            ]
        elif kind == "checkpoint":  # touches no rows: it need not end the segment
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
        _bulk_insert(con, "insert into probes", PROBE_COLUMNS, probes)
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
    ended = [
        [ev["run_id"], status, *_ending(ev)]
        for kind, status in ENDINGS.items()
        for ev in changes.get(kind, [])
    ]
    if ended:
        _finish_all(con, ended)
    # the worker removes the checkpoints of a run that ended (not of one that failed)
    kept = [
        [
            ev["run_id"],
            ev.get("weights"),
            (ev.get("rule") or "non_finite") if ev["type"] == "diverged" else None,
        ]
        for kind in ("finished", "diverged")
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


def _ending(ev: dict[str, Any]) -> tuple[str | None, float, float | None]:
    """(error, time, elapsed) of an event that ends an attempt."""
    at = ev.get("time") or time.time()
    if ev["type"] == "disk_full":
        return f"stopped: disk full ({ev.get('error')})", at, None
    return ev.get("error"), at, ev.get("elapsed")


PROBE_COLUMNS = ("run_id", "epoch", "step", "probe", "key", "value")


def _insert_epochs(con: duckdb.DuckDBPyConnection, rows: list[list[Any]]) -> None:
    _bulk_insert(con, "insert or replace into epochs", ("run_id", *EPOCH_FIELDS), rows)


def with_rows(
    con: duckdb.DuckDBPyConnection, columns: tuple[str, ...], rows: list[list[Any]], sql: str
) -> None:
    """Run ``sql`` with ``rows`` as the view ``optlab_bulk_rows``: one array per column
    (None is NULL), so many rows take one statement."""
    import numpy as np

    data = {c: np.array([row[i] for row in rows], dtype=object) for i, c in enumerate(columns)}
    con.register("optlab_bulk_rows", data)
    try:
        con.execute(sql)
    finally:
        con.unregister("optlab_bulk_rows")


def _bulk_insert(
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


def _as_text(value: Any) -> Any:
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
        "attempts = attempts + (coalesce(journal_time, 0) < a.at)::integer, "
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


def _finish_all(con: duckdb.DuckDBPyConnection, rows: list[list[Any]]) -> None:
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


def recover(
    con: duckdb.DuckDBPyConnection, store: Path, run_ids: list[str] | None = None
) -> list[str]:
    """Re-ingest the journals that hold more than the store: those of runs it still shows as
    pending or running (left by a crash or Ctrl-C), and those of interrupted or failed runs
    whose journal has events newer than the store's (a later attempt cut off before its first
    write). Runs without a final event become 'interrupted', except a failed or interrupted
    run whose journal only adds the tail of the attempt that ended so (no new start): that
    keeps its ending. Returns their ids.

    Every `optlab run` calls this over the study's unfinished runs, which may be most of a
    100,000-run study: only the runs with a folder beside the store are read, and what they
    need is written in a few statements for all of them, not a few per run."""
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
            if status == "running":
                lost.append(run_id)
            continue
        if status in ("interrupted", "failed"):
            newer = [e for e in events if (e.get("time") or 0) > seen]
            if not newer:
                continue
            if not any(e["type"] in ("started", "resumed") for e in newer):
                # The tail of the attempt the store has already ended: its worker journaled
                # it, then was killed (stalled, or died) before sending it. Its rows are
                # kept, and so is the ending, unless the tail holds the run's own.
                replay.extend(newer)
                recovered.append(run_id)
                continue
        replay.extend(events)
        last = events[-1]
        if last["type"] not in ("finished", "failed", "diverged"):
            at = last.get("time") or time.time()
            unfinished.append([run_id, "interrupted", "interrupted before it finished", at, None])
        recovered.append(run_id)
    if lost:
        con.execute(
            "update run_state set status = 'pending' "
            "where run_id in (select unnest(?::varchar[])) and status = 'running'",
            [lost],
        )
    apply_events(con, replay, locations.roots(store))  # runs' events commute
    if unfinished:
        _finish_all(con, unfinished)
    return recovered


def journal_progress(store: Path, run_id: str) -> tuple[int, int] | None:
    """From a run's journal alone: (epochs done, last checkpoint epoch) of its latest attempt
    chain, or None when it has no events. For status, while the store may lag behind."""
    epochs: set[int] = set()
    checkpoint, seen = 0, False
    for ev in read_journal(journal_path(store, run_id)):
        kind, seen = ev.get("type"), True
        if kind == "started":
            epochs, checkpoint = set(), 0
        elif kind == "resumed":
            epochs = {e for e in epochs if e <= ev["epoch"]}
            checkpoint = ev["epoch"]
        elif kind == "epoch":
            epochs.add(ev["epoch"])
        elif kind == "checkpoint":
            checkpoint = ev["epoch"]
    return (len(epochs), checkpoint) if seen else None


def resume_points(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, dict]:
    """Per run: how many leading epochs the store holds without a gap (a checkpoint after
    them cannot be resumed from), its checkpoint folder and recorded thread count."""
    if not run_ids:
        return {}
    rows = con.execute(
        "select r.run_id, r.checkpoint_dir, r.threads, coalesce(e.n, 0), coalesce(e.last, 0) "
        "from run_state r left join (select run_id, count(*) as n, max(epoch) as last "
        "from epochs group by run_id) e using (run_id) "
        "where r.run_id in (select unnest(?::varchar[]))",
        [run_ids],
    ).fetchall()
    return {
        run_id: {
            "checkpoint_dir": folder,
            "threads": threads,
            "resume_upto": int(last) if n == last else 0,
        }
        for run_id, folder, threads, n, last in rows
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
    import socket

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
