"""`optlab merge OTHER.duckdb ...`: parts of studies run on machines that share no cluster,
brought into one store.

A run is its id (a hash of its resolved config and seed), so the same id in two stores is
the same run. Which copy is kept: a finished run (``done``) over anything else; a run that
ended (``diverged``, ``failed``) over one that did not; between two unfinished copies, the
one with more epochs; between two finished copies, this store's (both computed the same
thing). The kept copy brings its epoch rows, probe values, journal, log, checkpoints and saved
weights; nothing of the other copy is mixed in. Its files are copied into this store's
folders (a store and its folders are one unit: nothing here names the other store's files,
so removing runs here never touches them); with ``link`` they stay where they are, named
absolute and marked as the other store's (``runs.files_store``), and nothing here removes
them. A study in both stores from the same study file text gets the
union of its runs. A study whose file differs keeps this store's version: the other's runs
come into the store but count for the study only once it is run with a file that has them
(then they are found done), as with any edited study. One id standing for two configs is a
real conflict: nothing is merged and it is named. All of it is one transaction: an error
leaves this store as it was.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import duckdb

from optlab import locations
from optlab.atomic import write_atomic
from optlab.errors import OptlabError, StoreBusy
from optlab.events import encode, parse_journal
from optlab.states import State
from optlab.store import core as st
from optlab.store import records
from optlab.store.sql import q

# the rest (unfinished): 1, pending: 0
RANK = {State.DONE: 3, State.DIVERGED: 2, State.FAILED: 2, State.STOPPED: 2}


@dataclass
class Merged:
    """What one other store brought."""

    other: Path
    studies_new: list[str] = field(default_factory=list)
    studies_joined: list[str] = field(default_factory=list)
    studies_differ: list[str] = field(default_factory=list)
    runs_new: int = 0
    runs_replaced: int = 0
    runs_kept: int = 0
    epochs: int = 0
    probes: int = 0
    adopted: list[str] = field(default_factory=list)  # the runs whose copy came from there
    folders: dict[str, Path] = field(default_factory=dict)  # adopted run -> its files there
    link: bool = False
    studies: list[str] | None = None  # only these studies' runs and records, if given


def _rank(status: str, epochs: int) -> tuple[int, int]:
    return (RANK.get(status, 0 if status == State.PENDING else 1), epochs)


def merge(
    store: Path, others: list[Path], link: bool = False, studies: list[str] | None = None
) -> list[Merged]:
    """Merge ``others`` into ``store``: all they hold, or only the runs and records of
    ``studies`` (what a bundle of one study carries)."""
    for other in others:
        if not other.is_file():
            raise OptlabError(f"{other}: no such store file")
        if store.exists() and os.path.samefile(other, store):
            raise OptlabError(f"{other}: is this store itself (--store {store})")
        with st.reading(other, require_runs=False):
            pass  # an optlab store, not a newer one, and not held by a writer
    results = []

    def attach_all(con: Any) -> None:
        for i, other in enumerate(others):
            _attach(con, other, f"optlab_merge_{i}")

    with st.writing(store, before=attach_all) as con:
        st.ensure_schema(con, store)
        for i, other in enumerate(others):
            results.append(_merge_one(con, store, other, link, f"optlab_merge_{i}", studies))
        st.refresh_runs_view(con)
    for result in results:
        _copy_files(store, result)
    return results


def _merge_one(
    con: Any, store: Path, other: Path, link: bool, name: str, only: list[str] | None
) -> Merged:
    done = Merged(other, link=link, studies=only)
    o = name  # the other store's catalog, attached before the transaction began
    _check_conflicts(con, other, o)
    if only is None:
        only = [s for (s,) in con.execute(f"select study from {o}.studies").fetchall()]
        scope = f"select run_id from {o}.run_state"
    else:
        scope = f"select run_id from {o}.memberships where study in (select unnest(?::varchar[]))"
    con.execute(f"create or replace temp table scope as {scope}", [only] if "?" in scope else [])
    theirs = dict(
        (
            (r, (s, e))
            for r, s, e in con.execute(
                f"select r.run_id, r.status, count(e.epoch) from {o}.run_state r "
                f"left join {o}.epochs e using (run_id) "
                "where r.run_id in (select run_id from scope) group by all"
            ).fetchall()
        )
    )
    ours = dict(
        (
            (r, (s, e))
            for r, s, e in con.execute(
                "select r.run_id, r.status, count(e.epoch) from run_state r "
                "left join epochs e using (run_id) where r.run_id in (select run_id from "
                f"{o}.run_state) group by all"
            ).fetchall()
        )
    )
    adopt = []
    for run_id, (status, epochs) in sorted(theirs.items()):
        if run_id not in ours:
            adopt.append(run_id)
            done.runs_new += 1
        elif _rank(status, epochs) > _rank(*ours[run_id]) and ours[run_id][0] != State.DONE:
            adopt.append(run_id)
            done.runs_replaced += 1
        else:
            done.runs_kept += 1
    if adopt:
        con.execute("create temp table adopt as select unnest(?::varchar[]) as run_id", [adopt])
        _add_columns(con, o)
        for table in ("run_state", *st.RUN_TABLES):
            con.execute(f"delete from {table} where run_id in (select run_id from adopt)")
        for table in ("run_state", *st.RUN_TABLES):
            if not _has_table(con, o, table):  # an older store (before halving: no rungs)
                continue
            cols = _shared_columns(con, table, o)
            con.execute(
                f"insert into {table} ({cols}) select {cols} from {o}.{table} "
                "where run_id in (select run_id from adopt)"
            )
        done.epochs = con.execute(
            f"select count(*) from {o}.epochs where run_id in (select run_id from adopt)"
        ).fetchone()[0]
        done.probes = con.execute(
            f"select count(*) from {o}.probes where run_id in (select run_id from adopt)"
        ).fetchone()[0]
        _halved_alike(con, other)
        done.folders = _relocate(con, other, link)
        con.execute("drop table adopt")
    here = dict(con.execute("select study, source from studies").fetchall())
    studies = _shared_columns(con, "studies", o)
    for study, source in con.execute(
        f"select study, source from {o}.studies where study in (select unnest(?::varchar[])) "
        "order by study",
        [only],
    ).fetchall():
        if study not in here:
            done.studies_new.append(study)
        elif here[study] == source:
            done.studies_joined.append(study)
        else:
            done.studies_differ.append(study)
    con.execute(
        f"insert into studies ({studies}) select {studies} from {o}.studies "
        "where study not in (select study from studies) "
        "and study in (select unnest(?::varchar[]))",
        [only],
    )
    con.execute(
        f"insert into memberships select * from {o}.memberships "
        "where study not in (select unnest(?::varchar[])) "
        "and study in (select unnest(?::varchar[])) "
        "on conflict (study, run_id) do nothing",
        [done.studies_differ, only],
    )
    con.execute("drop table scope")
    done.adopted = adopt
    return done


def _attach(con: Any, other: Path, name: str, timeout: float = 15.0) -> None:
    """Attach the other store read-only, retrying while its writer holds it for a batch (as
    readers do); a store busy for longer is one line that says so."""

    deadline = time.monotonic() + timeout
    while True:
        try:
            con.execute(f"attach '{q(str(other))}' as {name} (read_only)")
            return
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            if time.monotonic() >= deadline:
                raise StoreBusy(
                    f"{other}: busy (a study writing it holds it); try again, or merge it "
                    "once that study has finished"
                ) from None
            time.sleep(0.05)


def _check_conflicts(con: Any, other: Path, o: str) -> None:
    clash = con.execute(
        f"select o.run_id from {o}.run_state o join run_state r using (run_id) "
        "where o.config::varchar is distinct from r.config::varchar limit 1"
    ).fetchone()
    if clash:
        raise OptlabError(
            f"{other}: run {clash[0]} has another config there than here (one "
            "id, two configs: the stores were made by incompatible optlab "
            "versions); nothing merged"
        )


def _columns(con: Any, table: str, catalog: str) -> dict[str, str]:
    return dict(
        con.execute(
            "select column_name, data_type from information_schema.columns where table_name = ? "
            "and table_catalog = ? order by ordinal_position",
            [table, catalog],
        ).fetchall()
    )


def _add_columns(con: Any, o: str) -> None:
    """Config columns the other store has and this one does not (another study's keys)."""
    mine = _columns(con, "run_state", _catalog(con))
    for col, kind in _columns(con, "run_state", o).items():
        if col not in mine:
            con.execute(f'alter table run_state add column "{col}" {kind}')


def _catalog(con: Any) -> str:
    return con.execute("select current_database()").fetchone()[0]


def _halved_alike(con: Any, other: Path) -> None:
    """The seeds of one configuration are halved together (on their mean): a configuration
    stopped at a rung for one seed and sent on for another was halved apart, on different
    seeds, in the two stores (parts of a halving study run by seed, by an optlab that
    allowed it). One session could never give that; the merge is refused, with the reason,
    and this store is left as it was."""
    row = con.execute(
        "select r.config->>'$.optimizer.name', k.epoch, "
        "list(distinct r.seed order by r.seed) filter (k.decision = 'stop'), "
        "list(distinct r.seed order by r.seed) filter (k.decision = 'continue') "
        "from rungs k join run_state r using (run_id) "
        "group by r.config::varchar, k.epoch, r.config->>'$.optimizer.name' "
        "having count(distinct k.decision) filter (k.decision in ('stop', 'continue')) > 1 "
        "order by all limit 1"
    ).fetchone()
    if row is not None:
        name, epoch, stopped, went_on = row
        raise OptlabError(
            f"merge {other}: a configuration ({name}) was stopped at the rung at epoch "
            f"{epoch} for seed(s) {', '.join(map(str, stopped))} and went on for seed(s) "
            f"{', '.join(map(str, went_on))}: the two stores halved it on different seeds "
            "(parts of a halving study run by seed), which one study never does; nothing "
            "was merged. Run the halving blocks with all their seeds in one store"
        )


def _has_table(con: Any, other: str, table: str) -> bool:
    (n,) = con.execute(
        "select count(*) from duckdb_tables() where database_name = ? and table_name = ?",
        [other.strip('"'), table],
    ).fetchone()
    return bool(n)


def _shared_columns(con: Any, table: str, o: str) -> str:
    theirs = _columns(con, table, o)
    return ", ".join(f'"{c}"' for c in _columns(con, table, _catalog(con)) if c in theirs)


def _relocate(con: Any, other: Path, link: bool) -> dict[str, Path]:
    """Point the adopted runs at their files here (copied into this store's folders, or with
    ``link`` left in the other store's, named absolute); returns each run's checkpoint
    folder there, to copy."""
    theirs = locations.roots(other)
    rows = con.execute(
        "select run_id, checkpoint_dir, checkpoint_path, weights_path from run_state "
        "where run_id in (select run_id from adopt)"
    ).fetchall()
    folders, changed = {}, []
    for run_id, folder, checkpoint, weights in rows:
        there = locations.resolve(folder, theirs)
        if there is None or not there.is_dir():
            there = locations.checkpoints_dir(other) / run_id
        folders[run_id] = there
        fix = _path_fix(run_id, theirs, link)
        changed.append(
            [
                run_id,
                folder and fix("checkpoint_dir", folder),
                checkpoint and fix("path", checkpoint),
                weights and fix("weights", weights),
                os.path.abspath(other) if link else None,
            ]
        )
    if changed:
        st.with_rows(
            con,
            ("run_id", "folder", "checkpoint", "weights", "files"),
            changed,
            "update run_state set log_path = 'runs/' || r.run_id || '/log.txt', "
            "checkpoint_dir = r.folder, checkpoint_path = r.checkpoint, "
            "weights_path = r.weights, files_store = r.files "
            "from optlab_bulk_rows r where run_state.run_id = r.run_id",
        )
    return folders


def _path_fix(run_id: str, theirs: dict[str, str], link: bool) -> Callable[[str, str], str]:
    """How a file the other store names for ``run_id`` is named here: in this store's
    checkpoint folder for the run (where it is copied to), or with ``link`` where it is."""

    def fix(kind: str, path: str) -> str:
        if link:
            return str(locations.resolve(path, theirs))
        if kind == "checkpoint_dir":
            return f"checkpoints/{run_id}"
        return f"checkpoints/{run_id}/{PurePath(path).name}"

    return fix


def _copy_files(store: Path, done: Merged) -> None:
    """The adopted runs' logs and journals (naming their files as this store does), their
    checkpoints and weights unless linked, and the other store's study records."""
    src, dst = st.artefacts_dir(done.other), st.artefacts_dir(store)
    theirs = locations.roots(done.other)
    for run_id in done.adopted:
        fix = _path_fix(run_id, theirs, done.link)
        if (src / run_id).is_dir():
            _copy_run_folder(src / run_id, dst / run_id, fix)
        folder = done.folders.get(run_id)
        if not done.link and folder is not None and folder.is_dir():
            target = st.checkpoints_dir(store) / run_id
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
    theirs_dir = st.studies_record_dir(done.other)
    if theirs_dir.is_dir():
        target = st.studies_record_dir(store)
        target.mkdir(parents=True, exist_ok=True)
        for record in sorted(theirs_dir.glob("*.json")):
            if done.studies is not None and record.stem not in done.studies:
                continue
            ours = records.read_record(target / record.name)
            if ours is None:
                shutil.copy2(record, target / record.name)
            elif (theirs := records.read_record(record)) is not None:
                # The same study from the same file: its record holds both stores' runs.
                st.write_json_atomic(target / record.name, records.union_records(ours, theirs))


def _copy_run_folder(src: Path, dst: Path, fix: Callable[[str, str], str]) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("events.jsonl"))
    journal = src / "events.jsonl"
    if journal.is_file():
        events, _ = parse_journal(journal.read_bytes())
        text = "".join(encode(locations.map_event(ev, fix)) + "\n" for ev in events)
        write_atomic(dst / "events.jsonl", text.encode())


def describe(done: Merged) -> str:
    parts = [
        f"{done.runs_new} new runs",
        f"{done.runs_replaced} replaced by a further copy",
        f"{done.runs_kept} kept as they were here",
    ]
    studies = []
    if done.studies_new:
        studies.append(f"new studies {', '.join(done.studies_new)}")
    if done.studies_joined:
        studies.append(f"runs joined to {', '.join(done.studies_joined)}")
    if done.studies_differ:
        studies.append(
            f"{', '.join(done.studies_differ)} from another study file there: "
            "this store's version kept, the other's runs count once the study is "
            "run with a file that has them"
        )
    return (
        f"merged {done.other}: {', '.join(parts)}; {done.epochs} epoch rows and "
        f"{done.probes} probe values" + (f"; {'; '.join(studies)}" if studies else "")
    )
