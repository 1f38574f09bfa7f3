"""The store: schema, idempotent event writes, recovery from journals, read-only queries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from optlab.events import encode, read_journal
from optlab.execution.coordinator import prepare
from optlab.store import core as st
from optlab.study.expand import expand
from optlab.study.schema import load_study
from tests.conftest import TINY, write_study


@pytest.fixture
def prepared(tmp_path):
    study = load_study(write_study(tmp_path))
    plans = expand(study)
    path = tmp_path / "optlab.duckdb"
    return path, prepare(path, study, plans, retry_failed=False).todo


def epoch_event(run_id, epoch):
    return {
        "type": "epoch",
        "run_id": run_id,
        "epoch": epoch,
        "step": epoch * 3,
        "samples": epoch * 48,
        "sfo": epoch * 48,
        "epoch_lr": 0.1,
        "epoch_batch_size": 16,
        "train_loss": 1.0,
        "train_acc": 0.5,
        "test_loss": 1.1,
        "test_acc": 0.4,
        "seconds": 0.1,
        "eval_seconds": 0.01,
        "time": time.time(),
    }


def test_runs_are_registered_pending_with_config_columns(prepared):
    path, todo = prepared
    assert len(todo) == 8
    with st.reading(path) as con:
        rows = con.execute(
            "select status, optimizer, optimizer_lr, lr, wd, batch_size, "
            "model_hidden from runs order by position"
        ).fetchall()
    assert rows[0] == ("pending", "sgd", 0.01, 0.01, 0.0, 16, "[8]")
    assert {r[0] for r in rows} == {"pending"}


def test_applying_a_batch_twice_changes_nothing(prepared):
    path, todo = prepared
    rid = todo[0].run_id
    batch = [
        {
            "type": "started",
            "run_id": rid,
            "provenance": {"device": "cpu: test"},
            "time": time.time(),
        },
        epoch_event(rid, 1),
        epoch_event(rid, 2),
        {"type": "finished", "run_id": rid, "time": time.time()},
    ]
    for _ in range(2):
        with st.writing(path) as con:
            st.apply_events(con, batch)
    with st.reading(path) as con:
        assert con.execute("select count(*) from epochs").fetchone()[0] == 2
        status, device, attempts = con.execute(
            "select status, device, attempts from run_state where run_id = ?", [rid]
        ).fetchone()
    assert (status, device) == ("done", "cpu: test")


def test_recovery_ingests_journals_and_marks_unfinished_runs_interrupted(prepared):
    path, todo = prepared
    done_id, cut_id = todo[0].run_id, todo[1].run_id
    for rid, events in (
        (
            done_id,
            [
                {"type": "started", "run_id": done_id},
                epoch_event(done_id, 1),
                {"type": "finished", "run_id": done_id},
            ],
        ),
        (
            cut_id,
            [{"type": "started", "run_id": cut_id}, epoch_event(cut_id, 1), epoch_event(cut_id, 2)],
        ),
    ):
        journal = st.journal_path(path, rid)
        journal.parent.mkdir(parents=True)
        journal.write_text("".join(encode(e) + "\n" for e in events) + '{"type": "epo')
    with st.writing(path) as con:
        recovered = st.recover(con, path)
    assert set(recovered) == {done_id, cut_id}
    with st.reading(path) as con:
        got = dict(con.execute("select run_id, status from run_state").fetchall())
        n = dict(con.execute("select run_id, count(*) from epochs group by all").fetchall())
    assert got[done_id] == "done" and got[cut_id] == "interrupted"
    assert n == {done_id: 1, cut_id: 2}


def test_recovery_sends_runs_that_never_wrote_back_to_pending_and_keeps_to_its_runs(prepared):
    """A run the store shows as running whose worker died before its first journal line
    (no folder, or a folder with only a log) is pending again; pending runs stay pending; a
    journal of a run outside ``run_ids`` is left alone."""
    path, todo = prepared
    no_folder, log_only, cut, other = (r.run_id for r in todo[:4])
    with st.writing(path) as con:
        st.apply_events(
            con, [{"type": "started", "run_id": r} for r in (no_folder, log_only, cut, other)]
        )
    st.log_path(path, log_only).parent.mkdir(parents=True)
    st.log_path(path, log_only).write_text("optlab worker 1: run\n")
    for rid in (cut, other):
        write_journal(path, rid, [{"type": "started", "run_id": rid}, epoch_event(rid, 1)])
    wanted = [r.run_id for r in todo if r.run_id != other]
    with st.writing(path) as con:
        assert st.recover(con, path, wanted) == [cut]
    with st.reading(path) as con:
        got = dict(con.execute("select run_id, status from run_state").fetchall())
        epochs = dict(con.execute("select run_id, count(*) from epochs group by all").fetchall())
    assert got[no_folder] == got[log_only] == "pending"
    assert got[cut] == "interrupted" and epochs == {cut: 1}
    assert got[other] == "running"  # not this recovery's run
    assert {got[r.run_id] for r in todo[4:]} == {"pending"}


@pytest.mark.slow  # real worker processes
def test_a_worker_killed_mid_run_loses_no_finished_epoch(prepared, tmp_path):
    """kill -9 of a real worker: every epoch it reported is in its journal and the store."""
    path, todo = prepared
    spec = todo[0]
    config = {
        **spec.config,
        "epochs": 400,
        "dataset": {**spec.config["dataset"], "train_size": 4000},
    }
    task = {
        "run_id": spec.run_id,
        "seed": 0,
        "config": config,
        "journal": str(st.journal_path(path, spec.run_id)),
        "log": str(st.log_path(path, spec.run_id)),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "optlab.training.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    proc.stdin.write(encode(task) + "\n")
    proc.stdin.flush()
    reported = 0
    for line in proc.stdout:
        reported += json.loads(line)["type"] == "epoch"
        if reported == 3:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with st.writing(path) as con:
        st.recover(con, path)
    with st.reading(path) as con:
        status = con.execute("select status from runs where run_id = ?", [spec.run_id]).fetchone()[
            0
        ]
        epochs = con.execute(
            "select max(epoch) from epochs where run_id = ?", [spec.run_id]
        ).fetchone()[0]
    assert status == "interrupted"
    assert epochs >= 3


def test_config_columns_widen_instead_of_failing(tmp_path):
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    st.ensure_schema(con)
    st.add_config_columns(con, [{"optimizer_lr": 1}])
    st.add_config_columns(con, [{"optimizer_lr": 0.5}])
    st.add_config_columns(con, [{"optimizer_lr": "x"}])
    assert st.table_columns(con, "run_state")["optimizer_lr"] == "VARCHAR"


def test_config_column_names():
    cols = st.config_columns(
        {
            "optimizer": {"name": "sgd", "lr": 0.1},
            "model": {"name": "mlp", "hidden": [8, 8]},
            "epochs": 3,
        }
    )
    assert cols == {
        "optimizer": "sgd",
        "optimizer_lr": 0.1,
        "model": "mlp",
        "model_hidden": "[8, 8]",
        "epochs": 3,
    }


def write_journal(path, rid, events, mode="a"):
    journal = st.journal_path(path, rid)
    journal.parent.mkdir(parents=True, exist_ok=True)
    with open(journal, mode) as f:
        f.write("".join(encode(e) + "\n" for e in events))


def test_a_run_interrupted_twice_keeps_both_attempts(prepared):
    path, todo = prepared
    rid = todo[0].run_id
    t = time.time()
    write_journal(
        path,
        rid,
        [
            {"type": "started", "run_id": rid, "time": t},
            epoch_event(rid, 1),
            epoch_event(rid, 2),
            {"type": "checkpoint", "run_id": rid, "epoch": 2, "path": "c2", "time": t + 1},
        ],
        mode="w",
    )
    with st.writing(path) as con:
        assert st.recover(con, path) == [rid]
    # The second attempt resumes from epoch 2 and is cut off before anything reaches the store.
    write_journal(
        path,
        rid,
        [
            {"type": "resumed", "run_id": rid, "epoch": 2, "checkpoint": "c2", "time": t + 2},
            {**epoch_event(rid, 3), "time": t + 3},
            {**epoch_event(rid, 4), "time": t + 4},
        ],
    )
    with st.writing(path) as con:
        assert st.recover(con, path) == [rid]
        assert st.recover(con, path) == []  # nothing newer: not replayed again
    with st.reading(path) as con:
        epochs = [
            e
            for (e,) in con.execute(
                "select epoch from epochs where run_id = ? order by epoch", [rid]
            ).fetchall()
        ]
        status, attempts, resumed = con.execute(
            "select status, attempts, resumed_from from run_state where run_id = ?", [rid]
        ).fetchone()
    assert epochs == [1, 2, 3, 4]
    assert (status, attempts, resumed) == ("interrupted", 2, 2)


def test_a_foreign_duckdb_file_or_a_newer_store_is_refused_and_left_alone(tmp_path, cli):
    foreign = tmp_path / "other.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("create table measurements (x integer)")
    con.close()
    write_study(tmp_path)
    before = foreign.read_bytes()
    for args in (
        ["status"],
        ["query", "select 1"],
        ["export"],
        ["plot", "heatmap"],
        ["run", "tiny.toml"],
        ["rm", "--study", "tiny", "--yes"],
    ):
        result = cli(*args, "--store", str(foreign))
        assert result.exit_code == 1, args
        assert result.stderr == (
            f"Error: {foreign}: not an optlab store (a DuckDB database "
            "with tables measurements); give another --store\n"
        ), args
    assert foreign.read_bytes() == before
    store = tmp_path / "optlab.duckdb"
    with st.writing(store) as con:
        st.ensure_schema(con)
        con.execute("update meta set value = '99' where key = 'schema_version'")
    for args in (["status"], ["run", "tiny.toml"]):
        result = cli(*args)
        assert result.exit_code == 1
        assert (
            "made by a newer optlab (store schema 99; this optlab knows up to 3)" in result.stderr
        )


def test_unusable_store_paths_are_one_line(tmp_path, cli):
    write_study(tmp_path)
    cases = {
        "/proc/optlab.duckdb": "cannot create",
        str(tmp_path / "nope" / "optlab.duckdb"): "does not exist",
        str(tmp_path): "is a folder",
    }
    for store, why in cases.items():
        result = cli("run", "tiny.toml", "--store", store)
        assert result.exit_code == 1 and why in result.stderr, (store, result.stderr)
        assert result.stderr.count("\n") == 1
    # a lock file that cannot be made (here a folder stands where it would go)
    (tmp_path / "optlab.duckdb.lock").mkdir()
    result = cli("run", "tiny.toml")
    assert result.exit_code == 1 and "cannot create the lock file" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "optlab.duckdb").exists()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o555)
        result = cli("run", "tiny.toml", "--store", str(locked / "optlab.duckdb"))
        assert result.exit_code == 1 and "not writable" in result.stderr


def test_the_seed_bands_t_table_is_students_t(prepared):
    """The 97.5% quantiles behind every chart's 95% band: Student's t, not a normal 1.96."""
    from scipy import stats

    path, _ = prepared
    con = duckdb.connect(str(path), read_only=True)
    try:
        table = dict(con.execute("select df, t975 from t_quantiles").fetchall())
    finally:
        con.close()
    assert sorted(table) == list(range(1, 1001))
    for df in (1, 2, 4, 9, 30, 1000):
        assert table[df] == float(stats.t.ppf(0.975, df))
    assert round(table[1], 3) == 12.706 and round(table[4], 3) == 2.776


def test_a_batch_of_interleaved_runs_is_written_as_each_run_in_order(tmp_path):
    """apply_events writes a batch in layers across runs; the store must be what applying
    every event on its own, in order, leaves, whatever the runs' events interleave."""
    import random

    def lives(run_ids):
        a, b, c, d = run_ids[:4]
        t = iter(range(1_000, 2_000))
        return {
            a: [
                {"type": "started", "run_id": a, "time": next(t)},
                *(epoch_event(a, e) | {"time": next(t)} for e in (1, 2, 3)),
                {"type": "finished", "run_id": a, "time": next(t), "weights": "/w/a.pt"},
            ],
            b: [
                {"type": "started", "run_id": b, "time": next(t)},
                epoch_event(b, 1) | {"time": next(t)},
                {"type": "checkpoint", "run_id": b, "epoch": 1, "path": "/c/1", "time": next(t)},
                epoch_event(b, 2) | {"time": next(t)},
                {"type": "resumed", "run_id": b, "epoch": 1, "checkpoint": "/c/1", "time": next(t)},
                epoch_event(b, 2) | {"time": next(t), "train_loss": 7.0},
                {
                    "type": "probe",
                    "run_id": b,
                    "epoch": 2,
                    "step": 6,
                    "probe": "p",
                    "values": {"global": 0.5},
                    "time": next(t),
                },
                {"type": "diverged", "run_id": b, "time": next(t), "rule": "loss_factor"},
            ],
            c: [
                {"type": "started", "run_id": c, "time": next(t)},
                epoch_event(c, 1) | {"time": next(t)},
                {"type": "failed", "run_id": c, "time": next(t), "error": "boom"},
                {"type": "started", "run_id": c, "time": next(t)},
                *(epoch_event(c, e) | {"time": next(t)} for e in (1, 2)),
                {"type": "checkpoint", "run_id": c, "epoch": 2, "path": "/c/2", "time": next(t)},
            ],
            d: [
                {"type": "started", "run_id": d, "time": next(t)},
                epoch_event(d, 1) | {"time": next(t)},
                {"type": "disk_full", "run_id": d, "time": next(t), "error": "ENOSPC"},
            ],
        }

    def interleaved(per_run, seed):
        queues, out, rng = [list(evs) for evs in per_run.values()], [], random.Random(seed)
        while any(queues):
            out.append(rng.choice([q for q in queues if q]).pop(0))
        return out

    def store_after(folder, batches):
        folder.mkdir()
        study = load_study(write_study(folder))
        path = folder / "optlab.duckdb"
        todo = prepare(path, study, expand(study), retry_failed=False).todo
        per_run = lives(sorted(r.run_id for r in todo))
        with st.writing(path) as con:
            for batch in batches(per_run):
                st.apply_events(con, batch)
            return (
                con.execute(
                    "select run_id, status, attempts, error, resumed_from, checkpoint_epoch, "
                    "checkpoint_path, weights_path, diverged_by, train_seconds, wall_seconds, "
                    "started_at, finished_at from run_state order by run_id"
                ).fetchall(),
                con.execute("select * from epochs order by run_id, epoch").fetchall(),
                con.execute("select * from probes order by all").fetchall(),
            )

    one_by_one = store_after(
        tmp_path / "each", lambda per_run: [[ev] for evs in per_run.values() for ev in evs]
    )
    assert {r[1] for r in one_by_one[0]} == {
        "done",
        "diverged",
        "running",
        "interrupted",
        "pending",
    }
    for seed in range(3):
        batched = store_after(tmp_path / f"b{seed}", lambda p, s=seed: [interleaved(p, s)])
        assert batched == one_by_one


def test_rebuild_from_study_records_old_and_new_gives_the_same_store(prepared):
    """A study record writes each cell's config once (its seeds point at it); rebuild makes
    the same runs from it as from a record of an earlier optlab, which gives every run its
    config. A record that points at no config is one line, naming the file."""
    from optlab.errors import StoreError
    from optlab.store import manage

    path, todo = prepared
    rid = todo[0].run_id
    write_journal(path, rid, [{"type": "started", "run_id": rid}, epoch_event(rid, 1)])
    query = (
        "select r.run_id, r.seed, r.config, r.status, r.optimizer_lr, m.block, m.position, "
        "m.axes from run_state r join memberships m using (run_id) order by all"
    )
    with st.writing(path) as con:
        st.recover(con, path)
    with st.reading(path) as con:
        before = con.execute(query).fetchall()
    record_path = st.studies_record_dir(path) / "tiny.json"
    record = json.loads(record_path.read_text())
    assert len(record["configs"]) == 4 and len(before) == 8  # 4 cells x 2 seeds

    manage.rebuild(path)
    with st.reading(path) as con:
        assert con.execute(query).fetchall() == before

    for block in record["blocks"]:
        for run in block["runs"]:
            run["config"] = record["configs"][run.pop("cell")]
    del record["configs"]
    record_path.write_text(json.dumps(record))
    manage.rebuild(path)
    with st.reading(path) as con:
        assert con.execute(query).fetchall() == before

    record["configs"] = []
    record["blocks"][0]["runs"][0] = {**record["blocks"][0]["runs"][0], "cell": 7}
    del record["blocks"][0]["runs"][0]["config"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(StoreError, match=r"tiny\.json: study record unreadable \(IndexError"):
        manage.rebuild(path)


def test_a_run_keeps_its_checkpoint_folder_while_it_exists(prepared, tmp_path):
    """Runs go on writing checkpoints where they have them (a folder under the default
    root, or on a shared disk); a run whose recorded folder is gone gets one under the root
    this `optlab run` uses. What was recovered on the way is reported."""
    path, todo = prepared
    study = load_study(tmp_path / "tiny.toml")
    default = tmp_path / "optlab.checkpoints"
    first = prepare(path, study, expand(study), retry_failed=False).resume
    assert {r.run_id: first[r.run_id]["checkpoint_dir"] for r in todo} == {
        r.run_id: str(default / r.run_id) for r in todo
    }
    kept, shared, gone, unused = (r.run_id for r in todo[:4])
    (default / kept).mkdir(parents=True)
    (tmp_path / "shared" / shared).mkdir(parents=True)
    (default / "not-a-folder").write_text("")
    with st.writing(path) as con:
        st.set_checkpoint_dirs(
            con,
            {shared: str(tmp_path / "shared" / shared), gone: str(tmp_path / "lost" / gone)},
        )
    write_journal(path, unused, [{"type": "started", "run_id": unused}, epoch_event(unused, 1)])
    elsewhere = tmp_path / "elsewhere"
    again = prepare(path, study, expand(study), retry_failed=False, checkpoint_root=elsewhere)
    assert (again.recovered, again.recovered_epochs) == ({unused: "interrupted"}, 1)
    got = {rid: again.resume[rid]["checkpoint_dir"] for rid in (kept, shared, gone, unused)}
    assert got == {
        kept: str(default / kept),
        shared: str(tmp_path / "shared" / shared),
        gone: str(elsewhere / gone),
        unused: str(elsewhere / unused),
    }


def test_a_failed_runs_journal_tail_is_kept_and_the_run_stays_failed(prepared):
    """A worker journals an event, then is killed (stalled) before it sends it, and the pool
    fails the run. Recovery adds the journaled epoch but keeps the failure: the run is not
    made 'interrupted' (it would be re-run without --retry-failed, and the session would
    exit 0). A tail that holds the run's own end (it finished) is the run's end."""
    path, todo = prepared
    t = time.time()
    for rid, tail in (
        (todo[0].run_id, []),
        (todo[1].run_id, [{"type": "finished", "run_id": todo[1].run_id, "time": t + 3}]),
    ):
        lives = [
            {"type": "started", "run_id": rid, "time": t},
            {**epoch_event(rid, 1), "time": t + 1},
        ]
        unsent = [{**epoch_event(rid, 2), "time": t + 2}, *tail]
        write_journal(path, rid, lives + unsent, mode="w")
        failure = {"type": "failed", "run_id": rid, "time": t + 5, "origin": "pool"}
        with st.writing(path) as con:
            st.apply_events(con, [*lives, {**failure, "error": "worker stalled"}])
    with st.writing(path) as con:
        assert set(st.recover(con, path)) == {todo[0].run_id, todo[1].run_id}
        assert st.recover(con, path) == []
    with st.reading(path) as con:
        got = {
            rid: (status, error, n)
            for rid, status, error, n in con.execute(
                "select run_id, status, error, (select count(*) from epochs e "
                "where e.run_id = r.run_id) from run_state r"
            ).fetchall()
        }
    assert got[todo[0].run_id] == ("failed", "worker stalled", 2)
    assert got[todo[1].run_id][0] == "done" and got[todo[1].run_id][2] == 2


@pytest.mark.parametrize(
    "tail",
    [b"\xff", b"\xe2\x82", b'{"type": "epoch", "run_id": "\xff"}\n', b"\x00" * 4096],
    ids=["bad byte", "cut character", "bad line", "zeros"],
)
def test_a_torn_journal_tail_costs_only_its_line(prepared, cli, tail):
    """A crash mid-write can leave bytes that are not UTF-8 or a zero-filled block at the end
    of a journal: recovery, status and a resumed attempt lose that tail and nothing else."""
    from optlab.events import cut_torn_tail

    path, todo = prepared
    rid = todo[0].run_id
    write_journal(path, rid, [{"type": "started", "run_id": rid}, epoch_event(rid, 1)])
    with open(st.journal_path(path, rid), "ab") as f:
        f.write(tail)
    status = cli("status")
    assert status.exit_code == 0, status.output
    with st.writing(path) as con:
        assert st.recover(con, path) == [rid]
    with st.reading(path) as con:
        assert con.execute("select count(*) from epochs").fetchone()[0] == 1
    # A resumed attempt appends after the cut, and is read back whole.
    cut_torn_tail(str(st.journal_path(path, rid)))
    write_journal(path, rid, [{"type": "resumed", "run_id": rid, "epoch": 1}, epoch_event(rid, 2)])
    assert [e["type"] for e in read_journal(st.journal_path(path, rid))] == [
        "started",
        "epoch",
        "resumed",
        "epoch",
    ]


def test_merge_waits_while_a_study_writes_the_other_store(prepared, tmp_path, monkeypatch):
    """A running study holds its store for each batch: merge from it waits for the batch
    (as readers do) instead of failing with advice to rebuild a healthy store."""
    import contextlib

    from optlab.store import merge

    other, _ = prepared
    store = tmp_path / "here.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print(flush=True); "
            "time.sleep(1.5)",
            str(other),
        ],
        stdout=subprocess.PIPE,
    )
    holder.stdout.readline()  # it holds the file now
    # The race: the other store was free when checked and is taken before it is attached.
    monkeypatch.setattr(st, "reading", lambda *a, **k: contextlib.nullcontext())
    try:
        (done,) = merge.merge(store, [other])
    finally:
        holder.wait()
    assert done.runs_new == 8


def test_a_hard_link_to_the_store_finds_the_same_writer_lock(prepared, tmp_path):
    """Two writers through two names of one store file (a hard link here; a bind mount of
    the file is the same) are refused as two through one name are: each would train every
    run, and write journals into folders the other's rebuild never reads."""
    from optlab.errors import StoreError
    from optlab.store.liveness import writer_lock

    path, _ = prepared
    (tmp_path / "elsewhere").mkdir()
    for other in (tmp_path / "h.duckdb", tmp_path / "elsewhere" / "optlab.duckdb"):
        os.link(path, other)
        with (
            writer_lock(path),
            pytest.raises(StoreError, match="another optlab process .* is writing"),
            writer_lock(other),
        ):
            pass
        with writer_lock(other):  # free again once the first lets go
            pass


def test_a_hard_link_made_while_a_new_store_is_written_is_refused(tmp_path):
    """The first `optlab run` on a new store takes its lock before the file exists; once
    the run has made the store, a hard link made to it (`ln s.duckdb hard.duckdb`) finds
    that writer, as the other names of the store do."""
    from optlab.errors import StoreError
    from optlab.store.liveness import writer_lock

    study = load_study(write_study(tmp_path))
    path = tmp_path / "s.duckdb"
    with writer_lock(path) as lock:
        prepare(path, study, expand(study), retry_failed=False)
        lock.claim_file()  # what `optlab run` does once the study is registered
        os.link(path, tmp_path / "hard.duckdb")
        with (
            pytest.raises(StoreError, match="through another name for the same file"),
            writer_lock(tmp_path / "hard.duckdb"),
        ):
            pass
    with writer_lock(tmp_path / "hard.duckdb"):  # free once the first lets go
        pass


def test_a_store_used_through_a_hard_link_keeps_one_set_of_folders(prepared, tmp_path):
    """Run through optlab.duckdb first, then through a link h.duckdb beside it: the second
    study's record and journals go in optlab.runs/, where a rebuild through the first name
    finds them (they went in h.runs/, and the rebuild lost the second study)."""
    from optlab.store import manage

    path, _ = prepared
    link = tmp_path / "h.duckdb"
    os.link(path, link)
    assert (st.artefacts_dir(link), st.checkpoints_dir(link)) == (
        st.artefacts_dir(path),
        st.checkpoints_dir(path),
    )
    text = TINY.format(lrs="[0.5]").replace('name = "tiny"', 'name = "second"')
    second = load_study(write_study(tmp_path, text=text, name="second.toml"))
    todo = prepare(link, second, expand(second), retry_failed=False).todo
    rid = todo[0].run_id
    write_journal(link, rid, [{"type": "started", "run_id": rid}, epoch_event(rid, 1)])
    assert not (tmp_path / "h.runs").exists()
    assert st.other_names(link) == (
        f"{link} has 2 names (hard links); its journals and checkpoints go in optlab.runs/ "
        "and optlab.checkpoints/, the folders of its name optlab.duckdb"
    )
    manage.rebuild(path)
    with st.reading(path) as con:
        studies = con.execute("select study from studies order by study").fetchall()
        epochs = con.execute("select count(*) from epochs where run_id = ?", [rid]).fetchone()
    assert studies == [("second",), ("tiny",)] and epochs == (1,)


def test_status_gives_the_checkpoint_a_resume_would_really_use(prepared, cli):
    """The store says the last checkpoint was at epoch 2, but that file was cut short: status
    names epoch 1, where the worker will resume from."""
    from optlab.training import checkpoint as ckpt

    path, todo = prepared
    rid = todo[0].run_id
    folder = st.checkpoints_dir(path) / rid
    folder.mkdir(parents=True)
    whole = ckpt.encode({"run_id": rid, "epoch": 1})
    (folder / ckpt.file_name(1)).write_bytes(whole)
    (folder / ckpt.file_name(2)).write_bytes(ckpt.encode({"run_id": rid, "epoch": 2})[:-7])
    events = [{"type": "started", "run_id": rid}, epoch_event(rid, 1), epoch_event(rid, 2)]
    events.insert(2, {"type": "checkpoint", "run_id": rid, "epoch": 1, "path": "x"})
    events.append({"type": "checkpoint", "run_id": rid, "epoch": 2, "path": "y"})
    write_journal(path, rid, events)
    with st.writing(path) as con:
        st.recover(con, path)
    out = cli("status").stdout
    assert f"tiny interrupted {rid}" in out and "resumes from epoch 1 of 2" in out
    # Progress counts epochs (2 of the study's 8 x 2), as the ETA does, not finished runs.
    assert out.splitlines()[1].split()[-2] == "12%"
    (folder / ckpt.file_name(2)).write_bytes(ckpt.encode({"run_id": rid, "epoch": 2}))
    assert "resumes from epoch 2 of 2" in cli("status").stdout


def test_small_reader_faults_are_one_clear_line(prepared, cli, tmp_path):
    """Two statements in one query say so (DuckDB would print the last alone); a store file
    lost beside its journals points at rebuild, not at running a study."""
    result = cli("query", "select 1; select 2")
    assert result.exit_code == 1 and result.stderr == (
        "Error: SQL: 2 statements; optlab query runs one and prints its result: give each in "
        "its own call\n"
    )
    path, _ = prepared
    path.unlink()
    status = cli("status")
    assert status.exit_code != 0
    assert "`optlab rebuild --store optlab.duckdb` makes it again" in status.stderr


def test_a_store_with_other_names_is_named_before_it_is_written(prepared, tmp_path):
    """Its folders go by the name it is given: a note says so when the file has others."""
    path, _ = prepared
    assert st.other_names(path) is None
    os.link(path, tmp_path / "h.duckdb")
    assert st.other_names(path) == (
        f"{path} has 2 names (hard links); its journals and checkpoints go in optlab.runs/ "
        "and optlab.checkpoints/ beside this name, so use this name for it from now on (or "
        "copy the store instead of linking it)"
    )
