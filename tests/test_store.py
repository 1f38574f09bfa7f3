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

from optlab import store as st
from optlab.coordinator import prepare
from optlab.events import encode
from optlab.expand import expand
from optlab.study import load_study
from tests.conftest import write_study


@pytest.fixture
def prepared(tmp_path):
    study = load_study(write_study(tmp_path))
    plans = expand(study)
    path = tmp_path / "optlab.duckdb"
    return path, prepare(path, study, plans, retry_failed=False).todo


def epoch_event(run_id, epoch):
    return {"type": "epoch", "run_id": run_id, "epoch": epoch, "step": epoch * 3,
            "samples": epoch * 48, "sfo": epoch * 48, "epoch_lr": 0.1, "epoch_batch_size": 16,
            "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.1, "test_acc": 0.4,
            "seconds": 0.1, "eval_seconds": 0.01, "time": time.time()}


def test_runs_are_registered_pending_with_config_columns(prepared):
    path, todo = prepared
    assert len(todo) == 8
    with st.reading(path) as con:
        rows = con.execute("select status, optimizer, optimizer_lr, lr, wd, batch_size, "
                           "model_hidden from runs order by position").fetchall()
    assert rows[0] == ("pending", "sgd", 0.01, 0.01, 0.0, 16, "[8]")
    assert {r[0] for r in rows} == {"pending"}


def test_applying_a_batch_twice_changes_nothing(prepared):
    path, todo = prepared
    rid = todo[0].run_id
    batch = [{"type": "started", "run_id": rid, "provenance": {"device": "cpu: test"},
              "time": time.time()}, epoch_event(rid, 1), epoch_event(rid, 2),
             {"type": "finished", "run_id": rid, "time": time.time()}]
    for _ in range(2):
        with st.writing(path) as con:
            st.apply_events(con, batch)
    with st.reading(path) as con:
        assert con.execute("select count(*) from epochs").fetchone()[0] == 2
        status, device, attempts = con.execute(
            "select status, device, attempts from run_state where run_id = ?", [rid]).fetchone()
    assert (status, device) == ("done", "cpu: test")


def test_recovery_ingests_journals_and_marks_unfinished_runs_interrupted(prepared):
    path, todo = prepared
    done_id, cut_id = todo[0].run_id, todo[1].run_id
    for rid, events in (
        (done_id, [{"type": "started", "run_id": done_id}, epoch_event(done_id, 1),
                   {"type": "finished", "run_id": done_id}]),
        (cut_id, [{"type": "started", "run_id": cut_id}, epoch_event(cut_id, 1),
                  epoch_event(cut_id, 2)]),
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


def test_a_worker_killed_mid_run_loses_no_finished_epoch(prepared, tmp_path):
    """kill -9 of a real worker: every epoch it reported is in its journal and the store."""
    path, todo = prepared
    spec = todo[0]
    config = {**spec.config, "epochs": 400,
              "dataset": {**spec.config["dataset"], "train_size": 4000}}
    task = {"run_id": spec.run_id, "seed": 0, "config": config,
            "journal": str(st.journal_path(path, spec.run_id)),
            "log": str(st.log_path(path, spec.run_id))}
    proc = subprocess.Popen([sys.executable, "-m", "optlab.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
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
        status = con.execute("select status from runs where run_id = ?",
                             [spec.run_id]).fetchone()[0]
        epochs = con.execute("select max(epoch) from epochs where run_id = ?",
                             [spec.run_id]).fetchone()[0]
    assert status == "interrupted"
    assert epochs >= 3


def test_config_columns_widen_instead_of_failing(tmp_path):
    con = duckdb.connect(str(tmp_path / "s.duckdb"))
    st.ensure_schema(con)
    st._add_config_columns(con, [{"optimizer_lr": 1}])
    st._add_config_columns(con, [{"optimizer_lr": 0.5}])
    st._add_config_columns(con, [{"optimizer_lr": "x"}])
    assert st._table_columns(con, "run_state")["optimizer_lr"] == "VARCHAR"


def test_config_column_names():
    cols = st.config_columns({"optimizer": {"name": "sgd", "lr": 0.1},
                              "model": {"name": "mlp", "hidden": [8, 8]}, "epochs": 3})
    assert cols == {"optimizer": "sgd", "optimizer_lr": 0.1, "model": "mlp",
                    "model_hidden": "[8, 8]", "epochs": 3}
