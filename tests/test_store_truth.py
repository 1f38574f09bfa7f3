"""Stores that tell the truth after anything: what `rm`, `rebuild`, `merge` and `status` say
of runs that halving stopped and of final runs, checked on stores made without training."""

from __future__ import annotations

import duckdb
import pytest

from optlab.store import core as st
from tests.synth import make_store

GRID = """
name = "s"
seeds = [0, 1]
[base]
epochs = 3
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = [0.01, 0.1]
"""


def rows(db, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_rm_takes_a_runs_halving_decisions_with_it(tmp_path, cli):
    """A removed run leaves nothing in the per-run tables, its rung decisions included: a
    later run of the same configuration must not meet a stale stop."""
    db = make_store(tmp_path, GRID, lambda c, s: 0.5)
    (gone,) = rows(db, "select run_id from runs where optimizer_lr = 0.01 and seed = 0")[0]
    (kept,) = rows(db, "select run_id from runs where optimizer_lr = 0.1 and seed = 0")[0]
    with st.writing(db) as con:
        st.apply_events(
            con,
            [
                {"type": "rung", "run_id": r, "epoch": 1, "decision": d, "time": 2.0e9}
                for r, d in ((gone, "stop"), (kept, "continue"))
            ],
            [],
        )
    result = cli("rm", "--where", f"run_id = '{gone}'", "--yes")
    assert result.exit_code == 0, result.output
    for table in ("epochs", "probes", "rungs"):
        assert rows(db, f"select count(*) from {table} where run_id = '{gone}'") == [(0,)]
    assert rows(db, "select run_id, decision from rungs") == [(kept, "continue")]


def journal(db, run_id: str, events: list[dict]) -> None:
    from optlab.events import encode

    path = st.journal_path(db, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(encode({"run_id": run_id, "time": 2.0e9, **e}) + "\n" for e in events))


def epoch(n: int) -> dict:
    return {"type": "epoch", "epoch": n, "step": n, "samples": 10 * n, "train_loss": 1.0}


def test_status_after_a_kill_reads_the_ends_the_journals_hold(tmp_path, cli):
    """The writer was killed (kill -9) after its workers journaled: one run finished, one
    was stopped at a rung, one was cut at epoch 2. Status tells them as the journals do (as
    `rebuild` and the next `optlab run` will), not all three as interrupted."""
    from optlab.analysis.status import study_status

    db = make_store(tmp_path, GRID, lambda c, s: 0.5, status=lambda c, s: "pending")
    ids = [r for (r,) in rows(db, "select run_id from runs order by run_id")]
    finished, stopped, cut = ids[:3]
    start = {"type": "started", "config": {}, "seed": 0}
    journal(db, finished, [start, epoch(1), epoch(2), epoch(3), {"type": "finished"}])
    journal(
        db,
        stopped,
        [start, epoch(1), {"type": "paused", "epoch": 1}]
        + [{"type": "rung", "epoch": 1, "decision": "stop", "reason": "r"}],
    )
    journal(db, cut, [start, epoch(1), epoch(2)])
    gone = __import__("subprocess").Popen(["true"])
    gone.wait()
    with st.writing(db) as con:
        con.execute("update run_state set status = 'running' where run_id in (?, ?, ?)", ids[:3])
        st.start_session(con, "gone", "s", 2, 4)
        con.execute("update sessions set pid = ?", [gone.pid])
    (status,) = study_status(db)
    assert {k: v for k, v in status.counts.items() if v} == {
        "done": 1,
        "stopped": 1,
        "interrupted": 1,
        "pending": 1,
    }
    assert [r["run_id"] for r in status.unfinished] == [cut]
    assert status.epochs_done == 3 + 3 + 2  # an ended run counts all its epochs
    out = cli("status").stdout
    assert f"s interrupted {cut} " in out and "(no checkpoint; 2 of 3 epochs done)" in out
    assert f"interrupted {stopped}" not in out and f"interrupted {finished}" not in out
    # The page tells them as status does.
    from starlette.testclient import TestClient

    from optlab.serve.app import create_app

    page = TestClient(create_app(db), base_url="http://127.0.0.1:8765").get("/api/studies/s").json()
    assert {k: v for k, v in page["counts"].items() if v} == {
        k: v for k, v in status.counts.items() if v
    }
    cells = {c["run_id"]: c["status"] for c in page["grid"]}
    assert (cells[finished], cells[stopped], cells[cut]) == ("done", "stopped", "interrupted")


def test_a_checkpoint_file_without_its_event_is_not_a_resume_point(tmp_path, cli):
    """Killed between writing the checkpoint file of epoch 2 and journaling its event: the
    run resumes from epoch 1 (file and event both there), which is what status says."""
    from optlab.training import checkpoint as ckpt

    db = make_store(tmp_path, GRID, lambda c, s: 0.5, status=lambda c, s: "pending")
    (rid,) = rows(db, "select run_id from runs order by run_id limit 1")[0]
    folder = st.checkpoints_dir(db) / rid
    folder.mkdir(parents=True)
    for n in (1, 2):
        (folder / ckpt.file_name(n)).write_bytes(ckpt.encode({"run_id": rid, "epoch": n}))
    start = {"type": "started", "config": {}, "seed": 0, "checkpoint_dir": str(folder)}
    made = {"type": "checkpoint", "epoch": 1, "path": str(folder / ckpt.file_name(1))}
    journal(db, rid, [start, epoch(1), made, epoch(2)])
    with st.writing(db) as con:
        st.recover(con, db)
        con.execute("update run_state set checkpoint_dir = ? where run_id = ?", [str(folder), rid])
        points = st.resume_points(con, [rid])
    assert points[rid]["resume_upto"] == 1
    assert f"{rid} optimizer.lr=" in (out := cli("status").stdout)
    assert "resumes from epoch 1 of 3" in out


TUNED = """
name = "tuned"
seeds = [0, 1]
[base]
epochs = 2
dataset = { name = "synthetic", val_fraction = 0.25 }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
[[block]]
name = "search"
final = { select = "val_acc", seeds = 2 }
[block.grid]
"optimizer.lr" = [0.01, 0.1]
"""


def test_a_part_by_seed_waits_for_the_other_seeds_before_its_final_runs(tmp_path):
    """Run with --set seeds=[1], a part picks no final runs of its own (its seeds alone
    would pick its own winner, and its final seeds would be the other part's search seed
    1): once every seed has run, the whole file picks them, with seeds after all of the
    file's (2, 3)."""
    from optlab.execution import finals
    from optlab.study.expand import expand, file_matrix
    from optlab.study.schema import load_study

    val = {0.01: 0.6, 0.1: 0.8}
    make_store(tmp_path, TUNED, lambda c, s: 0.5, validation=lambda c, s: val[c["optimizer"]["lr"]])
    path = tmp_path / "s.toml"
    (part,) = expand(load_study(path, ["seeds=[1]"]))
    file_matrix(path, ["seeds=[1]"], [part])
    assert part.file_seeds == [0, 1] and finals.seed_part(part)
    (whole,) = expand(load_study(path))
    with st.writing(tmp_path / "optlab.duckdb") as con:
        assert finals.selected(con, part) == []
        chosen = finals.selected(con, whole)
    final = finals.final_plan(whole, chosen)
    assert final.seeds == [2, 3] and {r.config["optimizer"]["lr"] for r in final.runs} == {0.1}
    part.file_seeds = [0, 1]  # a part's final seeds (were it to pick) come after the file's
    assert finals.final_plan(part, chosen).seeds == [2, 3]


def test_halving_refuses_a_part_of_its_seeds(tmp_path, cli):
    text = TUNED.replace(
        'final = { select = "val_acc", seeds = 2 }',
        'early_stop = { kind = "sha", metric = "val_acc", min_epochs = 1, reduction = 2 }',
    )
    (tmp_path / "h.toml").write_text(text)
    result = cli("run", "h.toml", "--set", "seeds=[0]")
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert (
        "block 'search' halves its configurations on the mean of all their seeds (0, 1); a part "
        "with seeds 0 would stop others than the whole study does" in result.output
    )
    assert not (tmp_path / "optlab.duckdb").exists()  # nothing written


def test_compare_refuses_final_runs_that_mix_configurations(tmp_path, cli):
    """Two parts merged from an older optlab, each with its own winner: `compare` says why
    it will not answer rather than pooling two configurations as one confirmation."""
    from optlab.execution import finals
    from optlab.study.expand import expand
    from optlab.study.schema import load_study

    db = make_store(tmp_path, TUNED, lambda c, s: 0.5, validation=lambda c, s: 0.5)
    (plan,) = expand(load_study(tmp_path / "s.toml"))
    picks = {r.config["optimizer"]["lr"]: r for r in plan.runs if r.seed == 0}
    mixed = [
        finals.final_plan(plan, [picks[0.01]]).runs[0],
        finals.final_plan(plan, [picks[0.1]]).runs[1],
    ]
    with st.writing(db) as con:
        st.add_runs(con, mixed)
        st.refresh_runs_view(con)
        events = []
        for r in mixed:
            events += [
                {"type": "started", "run_id": r.run_id, "time": 1.0e9, "provenance": {}},
                {"type": "epoch", "run_id": r.run_id, "epoch": 1, "test_acc": 0.5},
                {"type": "finished", "run_id": r.run_id, "time": 1.0e9 + 1},
            ]
        st.apply_events(con, events)
    result = cli("analyze", "compare", "--metric", "final_test_acc")
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert "the final runs of sgd mix 2 configurations" in result.output


@pytest.mark.parametrize("study", ["batch_growth.toml", "warmup_regimes.toml", "local_sgd.toml"])
def test_a_billion_epochs_on_paper_costs_nothing_to_show(cli, study):
    """`epochs = 1000000000` once made `optlab show` list a probe schedule and check a batch
    schedule epoch by epoch (a MemoryError, or the kernel killing it): both are asked per
    epoch now, and looked at only where they change."""
    from tests.conftest import ROOT

    result = cli("show", str(ROOT / "studies" / study), "--set", "epochs=1000000000")
    assert result.exit_code == 0, result.output
    probe = 'probes=[{name="grad_norm", epochs="1-1000000001"}]'
    result = cli(
        "show", str(ROOT / "studies" / study), "--set", "epochs=1000000000", "--set", probe
    )
    assert result.exit_code != 0 and result.output.count("\n") == 1
    assert "epoch 1000000001 is beyond the run's 1000000000 epochs" in result.output


def test_merge_refuses_parts_that_halved_a_configuration_apart(tmp_path, cli):
    """Two stores, each with one seed of a halving study (as an older optlab let parts run):
    one stopped a configuration at its rung, the other sent it on. Merged, the study would
    hold what no single run of it can; the merge says why and leaves this store as it was."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, seed, decision in ((a, 0, "stop"), (b, 1, "continue")):
        folder.mkdir()
        db = make_store(
            folder,
            GRID,
            lambda c, s: 0.5,
            status=lambda c, s, k=seed: "done" if s == k else "pending",
        )
        (rid,) = rows(db, f"select run_id from runs where optimizer_lr = 0.01 and seed = {seed}")[0]
        with st.writing(db) as con:
            event = {"type": "rung", "run_id": rid, "epoch": 1, "decision": decision}
            st.apply_events(con, [{**event, "time": 2.0e9}], [])
    before = rows(a / "optlab.duckdb", "select run_id, status from runs order by all")
    result = cli("merge", str(b / "optlab.duckdb"), "--store", str(a / "optlab.duckdb"))
    assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
    assert "was stopped at the rung at epoch 1 for seed(s) 0 and went on for seed(s) 1" in (
        result.output
    )
    assert rows(a / "optlab.duckdb", "select run_id, status from runs order by all") == before
