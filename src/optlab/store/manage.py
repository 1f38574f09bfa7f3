"""Looking after a store: a run's saved weights, removing runs, rebuilding a lost store.

Removing works on memberships, not bare runs: a run that two studies share keeps its rows and
files while the other study still counts it; only the membership the user named goes.
Rebuilding reads nothing from the old store file: the study records and per-run journals
beside it hold everything the store does except the session history.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb

from optlab import locations
from optlab.errors import OptlabError, StoreError, UsageError
from optlab.states import State
from optlab.store import core as st
from optlab.store.query import check_reads_only, one_line
from optlab.study.schema import WEIGHTS_AUTO_SECONDS

MIN_PREFIX = 4  # a run id may be shortened to a unique prefix this long


def resolve_ids(con: duckdb.DuckDBPyConnection, given: list[str]) -> list[str]:
    """Full run ids for ids or unique prefixes; one line for an unknown or ambiguous one."""
    found = []
    for text in given:
        key = text.strip().lower()
        if len(key) < MIN_PREFIX or not all(c in "0123456789abcdef" for c in key):
            raise UsageError(
                f"run id {text!r}: give a run id (12 hex digits) or at least its first {MIN_PREFIX}"
            )
        rows = [
            r
            for (r,) in con.execute(
                "select run_id from run_state where starts_with(run_id, ?) order by run_id", [key]
            ).fetchall()
        ]
        if not rows:
            raise OptlabError(f"run id {text!r}: no such run in this store")
        if len(rows) > 1:
            raise OptlabError(
                f"run id {text!r}: matches {len(rows)} runs "
                f"({', '.join(rows[:3])}...); give more of it"
            )
        found.append(rows[0])
    return list(dict.fromkeys(found))


# ---- weights ------------------------------------------------------------------------------


def weights_path(store: Path, run_id: str) -> tuple[str, Path]:
    run_id, path, _ = saved_weights(store, run_id)
    return run_id, path


def saved_weights(store: Path, run_id: str) -> tuple[str, Path, dict[str, Any]]:
    """The run's full id, its weights file, and what rebuilding its model takes (the model
    table, input shape and class count)."""
    with st.reading(store) as con:
        (run_id,) = resolve_ids(con, [run_id])
        status, path, wall, mode, model, shape, classes = con.execute(
            "select status, weights_path, wall_seconds, config->>'$.save_weights', "
            "config->'$.model', input_shape, num_classes from run_state where run_id = ?",
            [run_id],
        ).fetchone()
    path = locations.resolve(path, locations.roots(store))
    if path is None:
        if status != State.DONE:
            raise OptlabError(f"run {run_id} is {status}: weights are saved when a run finishes")
        mode = mode or "none"
        why = {
            "none": 'save_weights = "none"',
            "auto": f'save_weights = "auto" keeps them for runs over '
            f"{_minutes()} minutes; this one took {wall or 0:.0f} s",
        }.get(mode, f"save_weights = {mode!r}")
        raise OptlabError(
            f"run {run_id} kept no weights ({why}); set save_weights = "
            f'"final" and run it again after `optlab rm {run_id}`'
        )
    file = path
    if not file.is_file():
        raise OptlabError(f"run {run_id}: its weights file {file} is gone")
    return (
        run_id,
        file,
        {
            "model": json.loads(model),
            "input_shape": json.loads(shape or "null"),
            "num_classes": classes,
        },
    )


def loading_code(path: Path, build: dict[str, Any]) -> str:
    """Python that rebuilds the run's model with its plugin and loads the weights."""
    table = dict(build["model"])
    name = table.pop("name")
    shape = tuple(build["input_shape"] or ())
    return (
        f"import torch\nfrom optlab.plugins.registry import default_registry\n"
        f"model = default_registry().create('model', {name!r}, {table!r}, "
        f"input_shape={shape!r}, num_classes={build['num_classes']!r})\n"
        f"model.load_state_dict(torch.load({str(path)!r}))\n"
    )


def _minutes() -> int:

    return int(WEIGHTS_AUTO_SECONDS // 60)


def copy_weights(source: Path, to: Path) -> Path:
    target = to / source.name if to.is_dir() else to
    try:
        shutil.copyfile(source, target)
    except OSError as e:
        raise OptlabError(f"--to {to}: cannot write: {e.strerror or e}") from None
    return target


# ---- rm -----------------------------------------------------------------------------------


@dataclass
class Removal:
    """What ``optlab rm`` would do: memberships to drop, runs whose data goes with them."""

    memberships: list[tuple[str, str]]  # (study, run_id)
    runs: list[str]  # every membership selected (or none left): rows and files go
    shared: dict[str, list[str]] = field(default_factory=dict)  # run -> studies keeping it
    whole_studies: list[str] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    bytes: int = 0

    def describe(self) -> str:
        parts = []
        if self.runs:
            states = ", ".join(f"{n} {s}" for s, n in sorted(self.by_status.items()))
            parts.append(
                f"{_count(len(self.runs), 'run')} ({states}) with their epochs, "
                f"probes, logs, checkpoints and weights ({_size(self.bytes)})"
            )
        if self.shared:
            picked = sorted({s for s, r in self.memberships if r in self.shared})
            others = sorted({s for v in self.shared.values() for s in v})
            parts.append(
                f"{_count(len(self.shared), 'run')} from study {', '.join(picked)} "
                f"only (study {', '.join(others)} keeps them)"
            )
        if self.whole_studies:
            parts.append(f"study {', '.join(self.whole_studies)} itself")
        return "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def plan_removal(store: Path, run_ids: list[str], where: str | None, study: str | None) -> Removal:
    if not run_ids and where is None and study is None:
        raise UsageError("say what to remove: run ids, --where CONDITION or --study NAME")
    with st.reading(store) as con:
        if (
            study is not None
            and not con.execute("select count(*) from studies where study = ?", [study]).fetchone()[
                0
            ]
        ):
            raise OptlabError(f"--study {study!r}: no such study in {store}")
        ids = resolve_ids(con, run_ids) if run_ids else None
        pairs = _select(con, ids, where, study)
        if not pairs:
            raise OptlabError("nothing matches: no run removed")
        chosen = {r for _, r in pairs}
        members: dict[str, set[str]] = {}
        for s, r in con.execute(
            "select study, run_id from memberships where run_id in (select unnest(?::varchar[]))",
            [sorted(chosen)],
        ).fetchall():
            members.setdefault(r, set()).add(s)
        picked: dict[str, set[str]] = {}
        for s, r in pairs:
            if s is not None:
                picked.setdefault(r, set()).add(s)
        runs = sorted(r for r in chosen if members.get(r, set()) <= picked.get(r, set()))
        shared = {
            r: sorted(members[r] - picked.get(r, set())) for r in sorted(chosen) if r not in runs
        }
        rows = con.execute(
            "select run_id, status, checkpoint_dir, weights_path from run_state where run_id in "
            "(select unnest(?::varchar[]))",
            [runs],
        ).fetchall()
        own = _own_folders(store, st.checkpoint_roots(con))
        whole = []
        if study is not None and where is None and not run_ids:
            whole = [study]
    removal = Removal(
        memberships=sorted((s, r) for s, r in pairs if s is not None),
        runs=runs,
        shared=shared,
        whole_studies=whole,
    )
    for run_id, status, folder, weights in rows:
        removal.by_status[status] = removal.by_status.get(status, 0) + 1
        removal.files += _run_files(store, run_id, folder, weights, own)
    removal.bytes = sum(_tree_size(p) for p in removal.files)
    return removal


def _select(
    con: duckdb.DuckDBPyConnection, ids: list[str] | None, where: str | None, study: str | None
) -> list[tuple[str | None, str]]:
    """(study, run_id) pairs; a run in no study (left by an earlier version of a study file)
    is selected by id as (None, run_id). The user's condition runs alone, read-only checked,
    and its rows are then narrowed here, so no condition text can widen --study or the ids."""
    pairs = con.execute("select study, run_id from runs order by study, run_id").fetchall()
    if where is not None:
        sql = f"select study, run_id from runs where ({where}\n)"
        try:
            check_reads_only(sql)
            if len(duckdb.extract_statements(sql)) != 1:
                raise OptlabError("not one condition")
            matched = set(con.execute(sql).fetchall())
        except (OptlabError, duckdb.Error) as e:
            why = one_line(str(e)).removeprefix("SQL: ")
            raise OptlabError(
                f"--where {where!r}: give one SQL condition over the runs view ({why})"
            ) from None
        pairs = [p for p in pairs if p in matched]
    if study is not None:
        pairs = [p for p in pairs if p[0] == study]
    if ids is not None:
        wanted = set(ids)
        pairs = [p for p in pairs if p[1] in wanted]
        if study is None and where is None:
            found = {r for _, r in pairs}
            pairs += [(None, r) for r in ids if r not in found]
    return pairs


def _own_folders(store: Path, checkpoint_roots: list[str]) -> list[Path]:
    """The folders whose files belong to this store: its runs and checkpoints folders, and
    the ``--checkpoint-dir`` roots its own runs wrote under (a run merged in from another
    store and left there names files of that store: they are not this store's to remove)."""
    roots = locations.roots(store)
    return [Path(p) for p in roots.values()] + [
        locations.resolve(r, roots) for r in checkpoint_roots
    ]


def _run_files(
    store: Path, run_id: str, folder: str | None, weights: str | None, own: list[Path]
) -> list[Path]:
    roots = locations.roots(store)
    files = [st.artefacts_dir(store) / run_id]
    # A checkpoint folder is removed only when it is the run's own (named after it) in one of
    # this store's folders.
    for candidate in (locations.resolve(folder, roots), st.checkpoints_dir(store) / run_id):
        if candidate is not None and candidate.name == run_id and candidate not in files:
            files.append(candidate)
    kept = locations.resolve(weights, roots)
    if kept is not None and not any(kept.is_relative_to(f) for f in files):
        files.append(kept)
    return [f for f in files if f.exists() and _owned(f, own)]


def _owned(path: Path, own: list[Path]) -> bool:
    text = os.path.abspath(path)
    return any(text.startswith(os.path.abspath(root) + os.sep) for root in own)


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def remove(store: Path, removal: Removal) -> None:
    """Rows first, in one transaction, then files (a crash between leaves only files that no
    row and no study record points at), then the study records `rebuild` reads."""
    with st.writing(store) as con:
        for study, run_id in removal.memberships:
            con.execute("delete from memberships where study = ? and run_id = ?", [study, run_id])
        if removal.runs:
            ids = [removal.runs]
            for table in (*st.RUN_TABLES, "memberships", "run_state"):
                con.execute(
                    f"delete from {table} where run_id in (select unnest(?::varchar[]))", ids
                )
        for study in removal.whole_studies:
            con.execute("delete from studies where study = ?", [study])
    for path in removal.files:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    _update_records(store, removal)


def _update_records(store: Path, removal: Removal) -> None:
    gone: dict[str, set[str]] = {}
    for study, run_id in removal.memberships:
        gone.setdefault(study, set()).add(run_id)
    for study, run_ids in gone.items():
        path = st.studies_record_dir(store) / f"{study}.json"
        if study in removal.whole_studies:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for block in record.get("blocks", []):
            block["runs"] = [r for r in block.get("runs", []) if r["run_id"] not in run_ids]
        st.write_json_atomic(path, record)


# ---- rebuild ------------------------------------------------------------------------------


@dataclass
class Rebuilt:
    studies: list[str]
    runs: int
    journals: int
    by_status: dict[str, int]
    epochs: int
    aside: Path | None
    missing: list[str] = field(default_factory=list)  # in the old store, with no record


def rebuild(store: Path) -> Rebuilt:
    """A new store from the study records and run journals beside ``store``; the old file,
    if any, is kept aside under a dated name."""
    folder = st.studies_record_dir(store)
    records, studies = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(json.loads(path.read_text()))
            studies.append(_from_record(records[-1]))
        except (OSError, ValueError, LookupError, TypeError, AttributeError) as e:
            raise StoreError(
                f"{path}: study record unreadable ({type(e).__name__}: {e}); "
                "move it away to rebuild without it"
            ) from None
    if not records:
        raise StoreError(f"{store}: nothing to rebuild from: no study records in {folder}")
    tmp = store.with_name(f".{store.name}.rebuild-{os.getpid()}")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(tmp))
        try:
            st.ensure_schema(con)
            for study, plans in studies:
                st.register_study(con, study, plans, store)
            journals = len(st.recover(con, store))
            by_status = dict(
                con.execute(
                    "select status, count(*) from run_state group by status order by status"
                ).fetchall()
            )
            (epochs,) = con.execute("select count(*) from epochs").fetchone()
            con.execute("checkpoint")
        finally:
            con.close()
    except duckdb.Error as e:
        tmp.unlink(missing_ok=True)
        if st.is_disk_full(str(e)):
            raise StoreError(f"{store}: cannot rebuild: the disk is full") from None
        raise StoreError(f"{store}: cannot rebuild: {one_line(str(e))}") from None
    missing = sorted(set(_readable_studies(store)) - {r["study"] for r in records})
    aside = None
    if store.exists():
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = store.with_name(f"{store.name}.before-rebuild-{stamp}")
        os.replace(store, aside)
        wal = store.with_name(store.name + ".wal")
        if wal.exists():
            os.replace(wal, aside.with_name(aside.name + ".wal"))
    os.replace(tmp, store)
    return Rebuilt(
        [r["study"] for r in records],
        sum(by_status.values()),
        journals,
        by_status,
        epochs,
        aside,
        missing,
    )


def _readable_studies(store: Path) -> list[str]:
    """The studies the old store names, if it can still be read at all."""
    if not store.exists():
        return []
    try:
        con = duckdb.connect(str(store), read_only=True)
        try:
            return [s for (s,) in con.execute("select study from studies").fetchall()]
        finally:
            con.close()
    except duckdb.Error:
        return []


def _from_record(record: dict[str, Any]) -> tuple[Any, list[Any]]:
    study = SimpleNamespace(
        name=record["study"],
        file=record.get("file"),
        description=record.get("description"),
        source=record.get("source"),
    )
    configs = record.get("configs") or []

    def run(block: str, r: dict[str, Any]) -> SimpleNamespace:
        if "cell" in r:  # the config is shared with the cell's other seeds
            r = {**{k: v for k, v in r.items() if k != "cell"}, "config": configs[r["cell"]]}
        return SimpleNamespace(study=study.name, block=block, **r)

    plans = [
        SimpleNamespace(
            name=b["name"],
            axes=b.get("axes", []),
            seeds=b.get("seeds"),
            runs=[run(b["name"], r) for r in b["runs"]],
        )
        for b in record.get("blocks", [])
    ]
    return study, plans
