"""The store's API, one import for the stages above it (``from optlab.store import core as
st``); each name lives in the module of its role:

- :mod:`~optlab.store.files`: the folders and files beside a store;
- :mod:`~optlab.store.opening`: opening for reading (with retries) and for writing;
- :mod:`~optlab.store.schema`: tables, views, migrations and the config columns;
- :mod:`~optlab.store.registration`: registering a study and its runs;
- :mod:`~optlab.store.writer`: the coordinator's batched event writes;
- :mod:`~optlab.store.recovery`: re-ingesting journals, resume points, checkpoint roots;
- :mod:`~optlab.store.sessions`: `optlab run` sessions and their heartbeat.

DuckDB lets one process hold a database file at a time, so the coordinator opens the
file only while it writes a batch, and readers open it read-only, retrying briefly
while it is busy. User-facing tables and views: ``studies``, ``runs`` (one row per study
and run, with every resolved config value as its own column), ``epochs``, ``probes``,
``sessions``.
"""

from __future__ import annotations

from optlab.store.files import (
    artefacts_dir,
    checkpoints_dir,
    journal_path,
    log_path,
    other_names,
    studies_record_dir,
    write_json_atomic,
)
from optlab.store.opening import (
    check_store,
    is_disk_full,
    reading,
    writing,
)
from optlab.store.recovery import (
    checkpoint_roots,
    journal_progress,
    own_checkpoint_root,
    paused_at_rungs,
    recover,
    resume_points,
    set_checkpoint_dirs,
)
from optlab.store.registration import (
    add_runs,
    matrix_runs,
    register_study,
    states,
)
from optlab.store.schema import (
    ALIASES,
    FIXED_RUN_COLUMNS,
    PROVENANCE_COLUMNS,
    RUN_STATE_ADDED,
    RUN_TABLES,
    SCHEMA,
    SCHEMA_VERSION,
    STATES,
    add_config_columns,
    config_column,
    config_columns,
    ensure_schema,
    refresh_runs_view,
    table_columns,
)
from optlab.store.sessions import (
    heartbeat,
    start_session,
)
from optlab.store.writer import (
    ENDINGS,
    PROBE_COLUMNS,
    STATE_CHANGES,
    apply_events,
    as_text,
    bulk_insert,
    finish_all,
    with_rows,
)

__all__ = [
    "ALIASES",
    "ENDINGS",
    "FIXED_RUN_COLUMNS",
    "PROBE_COLUMNS",
    "PROVENANCE_COLUMNS",
    "RUN_STATE_ADDED",
    "RUN_TABLES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATES",
    "STATE_CHANGES",
    "add_config_columns",
    "apply_events",
    "artefacts_dir",
    "as_text",
    "bulk_insert",
    "check_store",
    "checkpoint_roots",
    "checkpoints_dir",
    "config_column",
    "config_columns",
    "ensure_schema",
    "finish_all",
    "heartbeat",
    "is_disk_full",
    "journal_path",
    "journal_progress",
    "paused_at_rungs",
    "log_path",
    "matrix_runs",
    "other_names",
    "own_checkpoint_root",
    "reading",
    "recover",
    "refresh_runs_view",
    "add_runs",
    "register_study",
    "resume_points",
    "set_checkpoint_dirs",
    "start_session",
    "states",
    "studies_record_dir",
    "table_columns",
    "with_rows",
    "write_json_atomic",
    "writing",
]
