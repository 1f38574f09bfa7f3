"""Successive halving and final runs through real `optlab run`s on digits: what stops where,
that a stopped run is a result that survives kill -9 and rebuild, that runs going on past
rungs (and --no-early-stop) resume exactly, and that the final runs are chosen on
validation only."""

from __future__ import annotations

import importlib.util
import json
import shutil
import textwrap
from pathlib import Path

import duckdb
import pytest

from optlab.execution import finals
from optlab.store import core as st
from optlab.study.expand import expand
from optlab.study.schema import load_study
from tests.conftest import ROOT, optlab, write_study
from tests.synth import make_store
from tests.test_cli_e2e import start, wait_for, workers_of
from tests.test_survival import gone

LRS = [0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4]
STUDY = f"""
name = "halved"
seeds = [0]
[base]
epochs = 9
dataset = {{ name = "digits", val_fraction = 0.2 }}
model = {{ name = "mlp", hidden = [32] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
batch_schedule = {{ name = "constant", batch_size = 64 }}
[[block]]
name = "search"
early_stop = {{ kind = "sha", metric = "val_acc", min_epochs = 1, reduction = 3 }}
final = {{ select = "val_acc", seeds = 2 }}
[block.grid]
"optimizer.lr" = {LRS}
"""
ROWS = "epoch, step, samples, train_loss, train_acc, val_acc, test_acc"


def read(folder: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(folder / "optlab.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def outcome(folder: Path) -> dict[str, tuple[str, int]]:
    """run id -> (state, epochs kept), for the search block's runs."""
    return {
        run_id: (status, epochs)
        for run_id, status, epochs in read(
            folder,
            "select r.run_id, r.status, count(e.epoch) from runs r left join epochs e "
            "using (run_id) where r.block = 'search' group by all",
        )
    }


def rows_of(folder: Path, run_id: str) -> list[tuple]:
    return read(folder, f"select {ROWS} from epochs where run_id = '{run_id}' order by epoch")


@pytest.fixture(scope="session")  # made once a worker, however its tests are spread
def halved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("halved")
    write_study(folder, text=STUDY, name="halved.toml")
    proc = optlab("run", "halved.toml", "--workers", "2", cwd=folder, check=True)
    assert "stopped at a rung by successive halving" in proc.stdout
    # As that one session left it, before any test runs anything else in it.
    shutil.copytree(folder, folder.with_name(folder.name + "-as-left"))
    return folder


def as_left(halved: Path, tmp_path: Path) -> Path:
    """A copy of the halved study's folder as its one `optlab run` left it."""
    copy = tmp_path / "copy"
    shutil.copytree(halved.with_name(halved.name + "-as-left"), copy)
    return copy


EVERY_RUN = (
    "select r.run_id, r.block, r.status, count(e.epoch), sum(e.val_acc) from runs r "
    "left join epochs e using (run_id) group by all order by all"
)


@pytest.mark.slow  # real worker processes
def test_sha_keeps_a_third_at_each_rung_and_stopped_runs_keep_their_rows(halved):
    """9 configurations, rungs at epochs 1 and 3: 6 stop at 1, 2 at 3, 1 trains all 9."""
    got = outcome(halved)
    assert sorted(got.values()) == sorted(
        [("stopped", 1)] * 6 + [("stopped", 3)] * 2 + [("done", 9)]
    )
    decisions = read(
        halved,
        "select epoch, decision, count(*) from rungs group by all order by all",
    )
    assert decisions == [(1, "continue", 3), (1, "stop", 6), (3, "continue", 1), (3, "stop", 2)]
    (reason,) = read(halved, "select error from runs where status = 'stopped' limit 1")[0]
    assert reason.startswith("stopped at epoch ") and "(sha): val_acc" in reason
    status = optlab("status", cwd=halved, check=True).stdout
    assert "stopped" in status.splitlines()[0]
    again = optlab("run", "halved.toml", cwd=halved, check=True)
    assert "Nothing to run" in again.stdout
    # going on past a rung (a resume from its checkpoint) is not another attempt
    assert read(halved, "select distinct attempts from runs") == [(1,)]


@pytest.mark.slow  # real worker processes
def test_the_survivor_equals_a_run_trained_straight_through(halved, tmp_path):
    """Paused at each rung and resumed from its checkpoint there, the surviving run's rows
    are those of the same run trained without a pause (its id is the same: halving is not
    part of it)."""
    (survivor,) = [r for r, (s, _) in outcome(halved).items() if s == "done"]
    write_study(tmp_path, text=STUDY, name="halved.toml")
    optlab("run", "halved.toml", "--no-early-stop", "--only", survivor, cwd=tmp_path, check=True)
    assert rows_of(tmp_path, survivor) == rows_of(halved, survivor)


@pytest.mark.slow  # real worker processes
def test_final_runs_take_the_best_on_validation_with_fresh_seeds(halved):
    (survivor,) = [r for r, (s, _) in outcome(halved).items() if s == "done"]
    finals_ = read(
        halved,
        "select seed, status, config from runs where block = 'search/final' order by seed",
    )
    assert [(seed, status) for seed, status, _ in finals_] == [(1, "done"), (2, "done")]
    (config,) = read(halved, f"select config from runs where run_id = '{survivor}'")[0]
    assert {json.loads(c)["optimizer"]["lr"] for *_, c in finals_} == {
        json.loads(config)["optimizer"]["lr"]
    }
    proc = optlab("analyze", "compare", "--json", cwd=halved, check=True)
    result = json.loads(proc.stdout)
    (row,) = result["tables"]["compare"]
    assert (row["optimizer"], row["final_runs"], row["configurations"]) == ("sgd", 2, 9)
    assert row["stopped"] == 8
    assert row["search_epochs"] == 6 * 1 + 2 * 3 + 9
    assert "best epoch on the test set" in result["findings"]["caution"]
    honest = optlab("analyze", "compare", "--metric", "final_test_acc", "--json", cwd=halved)
    assert "caution" not in json.loads(honest.stdout)["findings"]


@pytest.mark.slow  # real worker processes
def test_rebuild_from_the_journals_gives_the_same_stops_and_final_runs(halved, tmp_path):
    """Rebuilt from the journals of the session that stopped runs and chose the final
    ones: the same stops, and the final runs (added while the study ran) with their rows,
    so that `analyze compare` still finds them and a new `optlab run` has nothing to do."""
    copy = as_left(halved, tmp_path)
    rungs = "select * exclude (decided_at) from rungs order by all"
    before = read(copy, EVERY_RUN), read(copy, rungs)
    assert {b for _, b, *_ in before[0]} == {"search", "search/final"}
    (copy / "optlab.duckdb").unlink()
    optlab("rebuild", cwd=copy, check=True)
    assert (read(copy, EVERY_RUN), read(copy, rungs)) == before
    again = optlab("run", "halved.toml", cwd=copy, check=True)
    assert "Nothing to run" in again.stdout


@pytest.mark.slow  # real worker processes
def test_no_early_stop_trains_stopped_runs_on_from_their_rung(halved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(halved, copy)
    stopped = [r for r, (s, _) in outcome(copy).items() if s == "stopped"]
    proc = optlab("run", "halved.toml", "--no-early-stop", "--workers", "2", cwd=copy, check=True)
    assert "running 8 of" in proc.stdout
    assert "8 of them resume from their last checkpoint" in proc.stdout
    assert sorted(outcome(copy).values()) == [("done", 9)] * 9
    # The search is now another: its final runs are those of what it selects now, only.
    best_of = (
        "select max(e.val_acc) from runs r join epochs e using (run_id) where r.block = 'search' "
    )
    (best,) = read(copy, best_of)[0]
    lrs = read(copy, "select distinct optimizer_lr from runs where block = 'search/final'")
    assert len(lrs) == 1
    (picked,) = read(copy, best_of + f"and r.optimizer_lr = {lrs[0][0]}")[0]
    assert picked == best
    straight = tmp_path / "straight"
    straight.mkdir()
    write_study(straight, text=STUDY, name="halved.toml")
    optlab("run", "halved.toml", "--no-early-stop", "--only", stopped[0], cwd=straight, check=True)
    assert rows_of(copy, stopped[0]) == rows_of(straight, stopped[0])


@pytest.mark.slow
def test_kill_9_while_runs_wait_at_a_rung_changes_no_stop(halved, tmp_path):
    """The coordinator killed once the first decisions are journaled; run again, the
    study ends with exactly the stops of the uninterrupted one (sha does not depend on
    the order runs finish, and resumed runs reproduce their rows)."""
    write_study(tmp_path, text=STUDY, name="halved.toml")
    proc = start(["run", "halved.toml", "--workers", "2"], tmp_path)
    journals = tmp_path / "optlab.runs"

    def decided() -> int:
        return sum(j.read_text().count('"type":"rung"') for j in journals.glob("*/events.jsonl"))

    wait_for(lambda: decided() >= 3, every=0.01)
    workers = workers_of(proc.pid)
    proc.kill()
    proc.communicate()
    wait_for(lambda: gone(workers))
    # Status reads the ends the journals hold: a run stopped at a rung is stopped.
    ended = {}
    for journal in journals.glob("*/events.jsonl"):
        last = json.loads(journal.read_text().splitlines()[-1])
        ended[journal.parent.name] = last
    stops = sum(1 for e in ended.values() if e["type"] == "rung" and e["decision"] == "stop")
    from optlab.analysis.status import study_status

    (status,) = study_status(tmp_path / "optlab.duckdb")
    assert status.counts["stopped"] == stops
    # paused at a rung, waiting for its group, or told to go on but not yet started again
    waiting = {
        r
        for r, e in ended.items()
        if e["type"] == "paused" or (e["type"] == "rung" and e["decision"] != "stop")
    }
    optlab("run", "halved.toml", "--workers", "2", cwd=tmp_path, check=True)
    assert outcome(tmp_path) == outcome(halved)
    assert read(tmp_path, "select run_id, epoch, decision from rungs order by all") == read(
        halved, "select run_id, epoch, decision from rungs order by all"
    )
    # A run that waited at a rung when the coordinator died is decided there, not started
    # again just to pause again, and one told to go on goes on: each had one attempt, as in
    # the uninterrupted study.
    attempts = dict(read(tmp_path, "select run_id, attempts from runs where block = 'search'"))
    assert {r: attempts[r] for r in waiting} == dict.fromkeys(waiting, 1)


PLANTED = """
name = "planted"
seeds = [0, 1]
[base]
epochs = 3
dataset = { name = "digits", val_fraction = 0.2 }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
[[block]]
name = "search"
final = { select = "val_acc", seeds = 3 }
[block.grid]
"optimizer.lr" = [0.01, 0.1, 1.0]
"""


def test_selection_reads_validation_only(tmp_path):
    """lr 1.0 is planted best on test and worst on validation: lr 0.1, best on validation,
    is selected, and its final runs use seeds 2, 3, 4."""
    test = {0.01: 0.80, 0.1: 0.85, 1.0: 0.99}
    val = {0.01: 0.70, 0.1: 0.90, 1.0: 0.50}
    db = make_store(
        tmp_path,
        PLANTED,
        lambda c, s: test[c["optimizer"]["lr"]],
        validation=lambda c, s: val[c["optimizer"]["lr"]],
    )
    (plan,) = expand(load_study(tmp_path / "s.toml"))
    with st.writing(db) as con:
        chosen = finals.selected(con, plan)
    assert [c.config["optimizer"]["lr"] for c in chosen] == [0.1]
    extra = finals.final_plan(plan, chosen)
    assert extra.name == "search/final" and extra.seeds == [2, 3, 4]
    assert {r.config["optimizer"]["lr"] for r in extra.runs} == {0.1}


def test_no_selection_while_a_run_of_the_group_is_unfinished(tmp_path):
    db = make_store(
        tmp_path,
        PLANTED,
        lambda c, s: 0.9,
        validation=lambda c, s: 0.9,
        status=lambda c, s: "pending" if c["optimizer"]["lr"] == 1.0 and s == 1 else "done",
    )
    (plan,) = expand(load_study(tmp_path / "s.toml"))
    with st.writing(db) as con:
        assert finals.selected(con, plan) == []


@pytest.mark.parametrize(
    ("old", "new", "wanted"),
    [
        (", val_fraction = 0.2", "", "final.select: val_acc needs a validation split"),
        ('select = "val_acc"', 'select = "test_acc"', "final.select"),
        ("seeds = 3 }", "seeds = 0 }", "final.seeds"),
        ("seeds = 3 }", "seeds = 3, pick = 1 }", "final.pick"),
    ],
)
def test_bad_final_tables_are_one_line(tmp_path, cli, old, new, wanted):
    path = tmp_path / "bad.toml"
    path.write_text(textwrap.dedent(PLANTED.replace(old, new)))
    result = cli("show", str(path))
    assert result.exit_code != 0 and result.output.count("\n") == 1
    assert wanted in result.output, result.output


@pytest.mark.slow  # real worker processes
def test_seed_003s_tuned_study_reports_budgets_and_the_confirmed_comparison(tmp_path):
    """The study file itself, on stand-in data and a smaller search: halving stops runs,
    each optimizer's winner is confirmed, and the report shows the budget curves and the
    comparison."""
    study = ROOT / "studies" / "adamw_vs_sgdm_tuned.toml"
    small = [
        "--set",
        "epochs=6",  # one rung, at epoch 5
        "--set",
        'dataset={name="synthetic", classes=4, shape=[3, 8, 8], train_size=48, '
        "test_size=16, val_fraction=0.25}",
        "--set",
        'model={name="cnn", channels=[4]}',
    ]
    for block in (0, 1):
        small += ["--set", f"block.{block}.search.n=6", "--set", f"block.{block}.final.seeds=3"]
    proc = optlab("run", str(study), *small, "--workers", "2", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = dict(read(tmp_path, "select block || ' ' || status, count(*) from runs group by 1"))
    # 6 configurations each: the best 2 go on past epoch 5 (asha: at least 2)
    assert counts["adamw stopped"] + counts.get("adamw done", 0) == 6
    assert counts["adamw stopped"] >= 1 and counts["sgdm stopped"] >= 1
    assert counts["adamw/final done"] == 3 and counts["sgdm/final done"] == 3
    optlab("report", cwd=tmp_path, check=True)
    (html,) = tmp_path.glob("*_report.html")
    text = html.read_text()
    for heading in ("<h3>budget", "<h3>compare"):
        assert heading in text
    assert "Welch" in text and "expected best_val_acc" in text


GROWN = """
name = "grown"
seeds = [0]
[base]
epochs = 3
dataset = {{ name = "digits", val_fraction = 0.2 }}
model = {{ name = "mlp", hidden = [32] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
[[block]]
name = "search"
early_stop = {{ kind = "asha", metric = "val_acc", min_epochs = 1, reduction = 3 }}
[block.grid]
"optimizer.lr" = {lrs}
"""


@pytest.mark.slow  # real worker processes
def test_a_grown_study_lets_a_stopped_run_go_on_from_its_rung(tmp_path):
    """One worker, so configurations reach epoch 1 in the file's order. First 0.05, then
    0.005 (second of two: stopped). The study grows by four learning rates too small to
    learn in an epoch: at the fourth (six at the rung, the best two go on) 0.005 goes on,
    from its checkpoint at epoch 1."""
    write_study(tmp_path, text=GROWN.format(lrs=[0.05, 0.005]), name="grown.toml")
    optlab("run", "grown.toml", "--workers", "1", cwd=tmp_path, check=True)
    lr = "select status from runs where optimizer_lr = 0.005"
    assert read(tmp_path, lr) == [("stopped",)]
    grown = [0.05, 0.005, 1e-5, 2e-5, 3e-5, 4e-5]
    write_study(tmp_path, text=GROWN.format(lrs=grown), name="grown.toml")
    optlab("run", "grown.toml", "--workers", "1", cwd=tmp_path, check=True)
    assert read(tmp_path, lr) == [("done",)]
    (run_id,) = read(tmp_path, "select run_id from runs where optimizer_lr = 0.005")[0]
    assert read(tmp_path, f"select epoch, decision from rungs where run_id = '{run_id}'") == [
        (1, "continue")
    ]
    journal = (tmp_path / "optlab.runs" / run_id / "events.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["type"] for line in journal]
    assert kinds.count("started") == 1 and kinds.count("resumed") == 1
    assert json.loads(journal[kinds.index("resumed")])["epoch"] == 1
    assert sum(1 for k in kinds if k == "epoch") == 3  # nothing trained twice


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs optlab[ray]")
def test_halving_on_ray_stops_what_the_local_executor_stops(halved, tmp_path, ray_head):
    """The Ray executor takes the runs that go on past a rung from the same queue, with
    their checkpoints shipped: sha's stops, the final runs and every row equal the local
    executor's."""
    write_study(tmp_path, text=STUDY, name="halved.toml")
    ray = ["--executor", "ray", "--address", ray_head]
    optlab("run", "halved.toml", *ray, "--workers", "2", cwd=tmp_path, check=True)
    assert outcome(tmp_path) == outcome(halved)
    rows = f"select run_id, {ROWS} from epochs order by all"
    assert read(tmp_path, rows) == read(halved, rows)


@pytest.mark.slow  # real worker processes
def test_merge_brings_the_stops_and_their_decisions(halved, tmp_path):
    optlab("merge", str(halved / "optlab.duckdb"), cwd=tmp_path, check=True)
    decisions = "select run_id, epoch, decision, value, rank, of, keep from rungs order by all"
    assert read(tmp_path, decisions) == read(halved, decisions)
    assert outcome(tmp_path) == outcome(halved)
    again = optlab("run", str(halved / "halved.toml"), cwd=tmp_path, check=True)
    assert "Nothing to run" in again.stdout
