"""The local pool and the coordinator, driven by a scripted fake worker (no torch, no
training): runs spread over slots with their events in order, a worker that dies fails only
its run, --retry-failed plans only the failed, a stalled worker is killed, and Ctrl-C leaves
the runs resumable. Each test takes a second or two."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from optlab.execution.coordinator import execute, prepare
from optlab.execution.devices import make_slots
from optlab.execution.executors.local import LocalExecutor
from optlab.execution.launch import EXIT_TIME_UP, exit_code
from optlab.execution.launch import _summary as summary
from optlab.store import core as st
from optlab.study.expand import expand
from tests.conftest import write_study

FAKE = Path(__file__).with_name("fake_worker.py")


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Run the tiny study (8 runs: seeds 0 and 1) on `slots` fake workers, each seed doing
    what `script` says; returns the outcome and the store."""
    python = tmp_path / "fake-python"
    # The fake ignores -m optlab.training.worker.
    python.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE}\n")
    python.chmod(0o755)
    study_file = write_study(tmp_path)
    db = tmp_path / "optlab.duckdb"

    def go(
        script: dict | None = None,
        slots: int = 2,
        retry_failed: bool = False,
        stall_timeout: float = 60.0,
        during=None,
        deadline: float | None = None,
    ):
        from optlab.study.schema import load_study

        monkeypatch.setenv("OPTLAB_FAKE_SCRIPT", json.dumps(script or {}))
        study = load_study(study_file)
        prepared = prepare(db, study, expand(study), retry_failed)
        if during is not None:
            threading.Thread(target=during, daemon=True).start()
        outcome = execute(
            db,
            study,
            prepared,
            make_slots([], 1, slots, cores=slots),
            Console(file=io.StringIO()),
            LocalExecutor(db, stall_timeout, python=str(python)),
            deadline=deadline,
        )
        return outcome, prepared

    return go


def rows(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_runs_spread_over_the_slots_with_every_event_in_order(run, tmp_path):
    outcome, prepared = run(slots=3)
    db = tmp_path / "optlab.duckdb"
    assert set(outcome.statuses.values()) == {"done"} and len(outcome.statuses) == 8
    assert (
        rows(
            db,
            "select run_id, list(epoch order by epoch) from epochs group by run_id "
            "having list(epoch order by epoch) <> [1, 2, 3]",
        )
        == []
    )
    workers = {w for (w,) in rows(db, "select worker from runs")}
    assert workers == {"cpu/0", "cpu/1", "cpu/2"}
    # the store's journal time is each run's last event: nothing was left unread
    for (run_id,) in rows(db, "select run_id from runs"):
        last = json.loads(st.journal_path(db, run_id).read_text().splitlines()[-1])
        assert last["type"] == "finished"


def test_a_worker_that_dies_fails_only_its_run_and_the_slot_goes_on(run, tmp_path):
    outcome, _ = run({"1": ["epoch", "crash"]}, slots=1)
    db = tmp_path / "optlab.duckdb"
    failed = {r for r, s in outcome.statuses.items() if s == "failed"}
    assert len(failed) == 4 and list(outcome.statuses.values()).count("done") == 4
    assert all("died (exit code 3) during the run" in outcome.errors[r] for r in failed)
    # what it reported before dying is kept; the one slot started a new worker each time
    kept = rows(db, "select run_id, max(epoch) from epochs group by run_id")
    assert {r: e for r, e in kept if r in failed} == dict.fromkeys(failed, 1)
    log = st.log_path(db, next(iter(failed))).read_text()
    assert "optlab: worker cpu/0 died (exit code 3) during the run" in log


def test_retry_failed_plans_the_failed_runs_only(run):
    run({"1": ["fail"]})
    _, again = run({}, retry_failed=False)
    assert again.todo == []
    outcome, retried = run({}, retry_failed=True)
    assert len(retried.todo) == 4 and {r.seed for r in retried.todo} == {1}
    assert set(outcome.statuses.values()) == {"done"}


def test_a_stalled_worker_is_killed_and_its_run_failed(run):
    # four slots, so that the four runs that hang are all waited out at once; the timeout
    # leaves a loaded machine's fake workers (the runs that do not hang) time to start
    outcome, _ = run({"0": ["epoch", "hang"]}, slots=4, stall_timeout=3)
    hung = [r for r, s in outcome.statuses.items() if s == "failed"]
    assert len(hung) == 4
    assert all("stalled: no progress for 3 s" in outcome.errors[r] for r in hung)


def test_ctrl_c_stops_the_workers_and_leaves_the_runs_resumable(run, tmp_path):
    db = tmp_path / "optlab.duckdb"

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(
                '"type":"epoch"' in p.read_text().replace(" ", "")
                for p in (tmp_path / "optlab.runs").glob("*/events.jsonl")
            ):
                break
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    outcome, _ = run({"0": ["epoch", "hang"], "1": ["epoch", "hang"]}, during=press_ctrl_c)
    assert outcome.interrupted
    states = dict(rows(db, "select run_id, status from runs"))
    assert "running" not in states.values() and "interrupted" in states.values()
    pids = [
        json.loads(p.read_text().splitlines()[0])["provenance"]["pid"]
        for p in (tmp_path / "optlab.runs").glob("*/events.jsonl")
        if p.read_text().strip()  # a worker stopped as it opened its journal wrote nothing
    ]
    assert pids and not any(
        Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        for pid in pids
    )
    # and the same study resumes: every run then finishes
    outcome, again = run({})
    assert len(again.todo) == 8 and set(outcome.statuses.values()) == {"done"}


def test_at_the_session_s_end_runs_hold_at_an_epoch_s_end_and_no_run_starts(run, tmp_path):
    """--stop-after: the two slots' first runs train past the deadline, hold at their next
    epoch's end (interrupted, resumable); no other run starts. The next session resumes
    them and runs the rest."""
    db = tmp_path / "optlab.duckdb"
    script = {"0": ["epoch", "await_deadline", "epoch", "epoch"]}
    # Seed 0's runs wait for the deadline: their slots are busy until then. The fake
    # workers start in well under the margin on any machine.
    outcome, prepared = run(script, slots=2, deadline=time.time() + 3)
    assert outcome.held and not outcome.interrupted
    assert exit_code(outcome) == EXIT_TIME_UP  # what `optlab run` exits with: 75
    said = io.StringIO()
    wide = Console(file=said, width=300)
    summary("tiny", prepared.todo, outcome, db, wide, wide)
    lines = said.getvalue().splitlines()
    assert lines[0].startswith("tiny: time up in ") and "2 interrupted" in lines[0]
    assert lines[-1].startswith("Time is up (--stop-after): to go on, run the same command")
    states = dict(rows(db, "select run_id, status from runs"))
    held = [r for r, s in states.items() if s == "interrupted"]
    assert len(held) == 2 and set(states.values()) == {"interrupted", "pending"}
    journal = [
        json.loads(line)
        for line in (tmp_path / "optlab.runs" / held[0] / "events.jsonl").read_text().splitlines()
    ]
    assert [e["type"] for e in journal][-2:] == ["epoch", "held"] and journal[-1]["epoch"] == 2
    assert rows(db, f"select error from run_state where run_id = '{held[0]}'") == [
        ("held at epoch 2: the session's time was up",)
    ]
    outcome, again = run({})
    assert len(again.todo) == 8 and set(outcome.statuses.values()) == {"done"}
    assert exit_code(outcome) == 0


def test_runs_that_share_a_plugin_table_whose_build_raised_are_not_started(run, tmp_path):
    outcome, prepared = run({"0": ["broken"]}, slots=1)
    db = tmp_path / "optlab.duckdb"
    assert set(outcome.statuses.values()) == {"failed"} and len(outcome.statuses) == 8
    seed_of = {r.run_id: r.seed for r in prepared.todo}
    tried = {r for r in outcome.statuses if seed_of[r] == 0}
    spared = {r for r in outcome.statuses if seed_of[r] == 1}
    for run_id in spared:  # each names the plugin and the run that showed it failing
        error = outcome.errors[run_id]
        assert error.startswith(
            "not started: PluginBuildError: optimizer plugin 'sgd' failed "
            "to build: ValueError: scripted (in run "
        )
        twin = error.rsplit("(in run ", 1)[1].rstrip(")")
        assert twin in tried
        other = next(r for r in prepared.todo if r.run_id == twin)
        mine = next(r for r in prepared.todo if r.run_id == run_id)
        assert other.config["optimizer"] == mine.config["optimizer"]
    # the spared runs never reached a worker
    journals = {p.parent.name for p in (tmp_path / "optlab.runs").glob("*/events.jsonl")}
    assert journals == tried
    assert rows(db, "select count(*) from runs where status = 'failed'") == [(8,)]
