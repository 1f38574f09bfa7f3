"""`--executor slurm`: a study submitted as jobs that outlive the command, checked on
submitit's local cluster (real processes, real signals) and, for what only a cluster shows
(the sbatch script, the job states), through fake ``sbatch`` and ``sacct`` on PATH."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import duckdb
import pytest

from optlab import leases
from tests.conftest import optlab, write_study
from tests.test_cli_e2e import wait_for, workers_of
from tests.test_early_stop import ROWS, outcome, read
from tests.test_survival import results, study

LOCAL = ["--executor", "slurm", "--executor-opt", "cluster=local"]


def journal_types(folder: Path, run_id: str) -> list[str]:
    path = folder / "optlab.runs" / run_id / "events.jsonl"
    return [json.loads(line)["type"] for line in path.read_text().splitlines()]


def epochs_journaled(folder: Path, run_id: str) -> int:
    path = folder / "optlab.runs" / run_id / "events.jsonl"
    return path.read_text().count('"type":"epoch"') if path.exists() else 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


@pytest.mark.slow
def test_jobs_go_on_through_a_time_limit_and_a_dead_node_to_the_local_executor_s_rows(
    reference, tmp_path
):
    """The study submitted: `optlab run` returns while the jobs train. One job gets the
    time limit's signal (its run holds at its epoch's end, checkpointed, and the job is
    requeued); the other is killed without warning (a node failure: its run goes to the
    job that is left). Every row equals the local executor's, uninterrupted."""
    study(tmp_path)
    opts = ["--executor-opt", "jobs=2", "--executor-opt", "lease=1"]
    submitted = optlab("run", "long.toml", *LOCAL, *opts, cwd=tmp_path, check=True)
    assert "submitted 2 of 2 runs" in submitted.stdout
    assert "Nothing needs to stay running here" in submitted.stdout

    def both_taken():  # each job holds a run (a run trains in a few seconds here)
        held = leases.read_all(tmp_path / "optlab.duckdb")
        return len(held) == 2 and sorted(held.values(), key=lambda lease: lease.holder)

    first, second = wait_for(both_taken, timeout=180, every=0.05)
    before = epochs_journaled(tmp_path, second.run_id)
    pid = {
        lease.run_id: json.loads((tmp_path / "optlab.runs/leases" / lease.run_id).read_text())[
            "pid"
        ]
        for lease in (first, second)
    }
    dead_workers = workers_of(pid[second.run_id])
    os.kill(pid[second.run_id], signal.SIGKILL)  # no warning: its lease goes stale
    os.kill(pid[first.run_id], signal.SIGUSR2)  # as Slurm at the time limit (--signal)
    assert wait_for(lambda: not any(alive(p) for p in dead_workers), timeout=60)

    def finished():
        proc = optlab(
            "query",
            "select count(*) from runs where status = 'done'",
            "--format",
            "csv",
            cwd=tmp_path,
            check=True,
        )
        return proc.stdout.splitlines()[1] == "2"

    assert wait_for(finished, timeout=240, every=0.5)
    # The killed job's run was finished by the other job (from its checkpoint, if it had one).
    assert journal_types(tmp_path, second.run_id)[-1] == "finished"
    assert epochs_journaled(tmp_path, second.run_id) > before
    logs = "".join(p.read_text() for p in (tmp_path / "optlab.runs/slurm").rglob("*.err"))
    assert "Caught signal SIGUSR2" in logs
    assert results(tmp_path) == reference
    status = optlab("status", cwd=tmp_path, check=True).stdout
    assert "submission" not in status  # every run ended: nothing of it left to follow


SBATCH = """#!/bin/sh
# a fake sbatch: keeps the script it was given, answers as Slurm does
cp "$1" "$FAKE_SLURM/job.sh"
echo "Submitted batch job 4242"
"""
SACCT = """#!/bin/sh
# a fake sacct: the job states the test wrote
cat "$FAKE_SLURM/sacct.txt"
"""


def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tools = tmp_path / "bin"
    tools.mkdir()
    srun = "#!/bin/sh\n# a fake srun: submitit looks for it to know it is on a cluster\nexit 1\n"
    for name, text in (("sbatch", SBATCH), ("sacct", SACCT), ("srun", srun)):
        (tools / name).write_text(text)
        (tools / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path))
    return tools


def test_a_submission_s_script_and_its_jobs_as_sacct_tells_them(cli, tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    write_study(tmp_path, lrs="[0.01, 0.1, 1.0]")  # 12 runs
    result = cli(
        "run", "tiny.toml", "--executor", "slurm", "--gpus", "0-1", "--per-gpu", "2",
        "--executor-opt", "partition=gpu", "--executor-opt", "time=4h",
        "--executor-opt", "array_parallelism=2", "--executor-opt", "signal_delay=300",
        "--executor-opt", "sbatch=--constraint=a100;--exclusive",
        "--executor-opt", "setup=module load cuda",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # 12 runs on 2 GPUs x 2 slots a job: 3 jobs, as one array of which 2 may run at once
    assert "submitted 12 of 12 runs (0 finished) as 3 job(s) 4242_0, 4242_1, 4242_2" in (
        result.output
    )
    script = (tmp_path / "job.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=240",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --array=0-2%2",
        "#SBATCH --signal=USR2@300",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclusive",
        "#SBATCH --cpus-per-task=4",
        "module load cuda",
    ):
        assert line in script, line
    # Nothing trains yet: the store has the runs pending, and sacct the jobs.
    store = tmp_path / "optlab.duckdb"
    plan = json.loads(next((tmp_path / "optlab.runs/slurm").glob("*/plan.json")).read_text())
    run_a, run_b = (entry["task"]["run_id"] for entry in plan["runs"][:2])
    assert leases.claim(store, run_a, "4242_0", "node1", 300.0)
    assert leases.claim(store, run_b, "4242_1", "node2", 300.0)
    gone = time.time() - 600  # node2 failed ten minutes ago: its lease is stale
    os.utime(tmp_path / "optlab.runs/leases" / run_b, (gone, gone))
    (tmp_path / "sacct.txt").write_text("4242_0|RUNNING|node1\n4242_1|NODE_FAIL|node2\n")
    said = cli("status").output
    assert "(slurm, 12 runs): jobs 1 active, 1 died, 1 unknown" in said
    assert f"job 4242_0: active (RUNNING on node1), training 1: {run_a}" in said
    assert f"job 4242_1 is gone with 1 run(s) unfinished ({run_b})" in said
    assert "/submitit/4242_1" in said.split(f"({run_b})")[1]  # where its log is
    # Array tasks still waiting come as one line; a lease taken back by its job is its own.
    (tmp_path / "sacct.txt").write_text("4242_[0-2%2]|PENDING|None assigned\n")
    assert "jobs 3 queued" in cli("status").output
    assert leases.claim(store, run_b, "4242_1", "node3", 300.0)
    assert not leases.claim(store, run_a, "4242_1", "node3", 300.0)  # 4242_0's, and live


def test_what_slurm_cannot_do_yet_is_one_line_before_the_store(cli, tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    write_study(tmp_path)
    for args, words in (
        (["--executor-opt", "time=soon"], "--executor-opt time 'soon': "),
        (["--gpus", "all"], "--gpus all: on Slurm, say how many GPUs each job gets"),
        (["--stop-after", "1h"], "--stop-after: the jobs of --executor slurm stop at their own"),
        (["--executor-opt", "mem=lots"], "--executor-opt mem='lots': give an amount"),
    ):
        result = cli("run", "tiny.toml", "--executor", "slurm", *args)
        assert result.exit_code != 0 and words in result.output, (args, result.output)
        assert not (tmp_path / "optlab.duckdb").exists()
        assert not (tmp_path / "job.sh").exists()


def test_a_stale_lease_goes_to_one_job_and_its_holder_learns_it_lost_it(tmp_path):
    store = tmp_path / "optlab.duckdb"
    assert leases.claim(store, "r1", "job-a", "node-a", 60.0)
    assert leases.renew(store, ["r1"], "job-a") == []
    assert not leases.claim(store, "r1", "job-b", "node-b", 60.0)  # live: job-a's
    assert leases.live_ids(store) == {"r1"}
    gone = time.time() - 120  # job-a's node died two minutes ago
    os.utime(tmp_path / "optlab.runs/leases/r1", (gone, gone))
    assert leases.live_ids(store) == frozenset()
    # Two jobs take it over at once: the steal file lets one through.
    (tmp_path / "optlab.runs/leases/r1.steal").touch()
    assert not leases.claim(store, "r1", "job-b", "node-b", 60.0)
    (tmp_path / "optlab.runs/leases/r1.steal").unlink()
    assert leases.claim(store, "r1", "job-b", "node-b", 60.0)
    assert not leases.claim(store, "r1", "job-c", "node-c", 60.0)
    assert leases.read(store, "r1").node == "node-b"
    # job-a, alive after all (a frozen NFS, say), finds out at its next renewal.
    assert leases.renew(store, ["r1"], "job-a") == ["r1"]
    leases.release(store, "r1", "job-a")  # not its to give up
    assert leases.read(store, "r1").holder == "job-b"
    leases.release(store, "r1", "job-b")
    assert leases.read_all(store) == {}


@pytest.mark.slow  # the page's folds run in a Python process of their own
def test_the_page_folds_the_jobs_journals_in_while_they_run(cli, tmp_path, monkeypatch):
    """`optlab serve` holds the store read-only; what the jobs journal reaches its pages
    through a fold in a child process every FOLD_EVERY seconds."""
    from optlab.cli import serve

    fake_slurm(tmp_path, monkeypatch)
    write_study(tmp_path)
    assert cli("run", "tiny.toml", "--executor", "slurm").exit_code == 0
    store = tmp_path / "optlab.duckdb"
    plan = json.loads(next((tmp_path / "optlab.runs/slurm").glob("*/plan.json")).read_text())
    run_id = plan["runs"][0]["task"]["run_id"]
    failed = {"type": "failed", "run_id": run_id, "time": time.time(), "error": "lost"}
    journal = tmp_path / "optlab.runs" / run_id / "events.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps(failed) + "\n")  # as a job's worker would journal it

    def state() -> str | None:
        try:
            con = duckdb.connect(str(store), read_only=True)
        except duckdb.IOException:  # the fold holds the store: read again, as optlab would
            return None
        try:
            return con.execute("select status from runs where run_id = ?", [run_id]).fetchone()[0]
        finally:
            con.close()

    assert state() == "pending"
    monkeypatch.setattr(serve, "FOLD_EVERY", 0.05)
    stop = threading.Event()
    folding = threading.Thread(target=serve._fold_while_jobs_run, args=(store, stop))
    folding.start()
    try:
        assert wait_for(lambda: state() == "failed", timeout=120)
    finally:
        stop.set()
        folding.join()


def test_runs_training_in_jobs_are_left_to_them(cli, tmp_path, monkeypatch):
    fake_slurm(tmp_path, monkeypatch)
    write_study(tmp_path)
    assert cli("run", "tiny.toml", "--executor", "slurm").exit_code == 0
    store = tmp_path / "optlab.duckdb"
    plan = json.loads(next((tmp_path / "optlab.runs/slurm").glob("*/plan.json")).read_text())
    for entry in plan["runs"]:  # every run taken by a job that is alive
        assert leases.claim(store, entry["task"]["run_id"], "4242_0", "node1", 300.0)
    here = cli("run", "tiny.toml")
    assert here.exit_code == 0
    assert "Nothing to run here: the runs of tiny not finished are training in Slurm" in (
        here.output
    )
    again = cli("run", "tiny.toml", "--executor", "slurm")
    assert "Nothing to run here: the runs of tiny not finished are training in Slurm jobs (8)" in (
        again.output
    )
    assert len(list((tmp_path / "optlab.runs/slurm").glob("*/plan.json"))) == 1


HALVED = """
name = "halved"
seeds = [0]
[base]
epochs = 3
dataset = { name = "digits", val_fraction = 0.2 }
model = { name = "mlp", hidden = [32] }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
batch_schedule = { name = "constant", batch_size = 64 }
[[block]]
name = "search"
early_stop = { kind = "sha", metric = "val_acc", min_epochs = 1, reduction = 3 }
final = { select = "val_acc", seeds = 2 }
[block.grid]
"optimizer.lr" = [0.02, 0.1, 0.4]
"""


@pytest.mark.slow  # real job processes (submitit's local cluster)
def test_halving_through_slurm_jobs_goes_round_by_round_to_the_local_stops(tmp_path):
    """sha and final runs under --executor slurm, with nothing of optlab's kept alive: each
    submission trains its runs to their next rung, and its last job goes on as `optlab run`
    again would (it decides at the rung, as the coordinator does, and submits the runs that
    go on, then the final runs). The stops, the decisions and every row equal the local
    executor's. (Its own local run, not test_early_stop's: that one is the Ray tests'.)"""
    here, there = tmp_path / "local", tmp_path / "slurm"
    for folder in (here, there):
        folder.mkdir()
        write_study(folder, text=HALVED, name="halved.toml")
    optlab("run", "halved.toml", "--workers", "2", cwd=here, check=True)
    opts = ["--workers", "2", "--executor-opt", "cluster=local", "--executor-opt", "jobs=1"]
    proc = optlab("run", "halved.toml", "--executor", "slurm", *opts, cwd=there, check=True)
    assert "halved: submitted 3 of 3 runs" in proc.stdout
    submissions = there / "optlab.runs" / "slurm"

    def through() -> bool:  # every job of every round has returned, the last going on too
        jobs = [j for j in submissions.glob("*/submitit/*") if j.name != "%j"]
        return bool(jobs) and all(list(j.glob("*_result.pkl")) for j in jobs)

    wait_for(through, timeout=240, every=0.5)
    # to rung 1; the one that goes on, to its end; the final runs (once the search is over)
    assert len(list(submissions.glob("*/plan.json"))) == 3
    assert read(there, "select count(*) from runs where status = 'stopped'") == [(2,)]
    optlab("status", cwd=there, check=True)  # folds the last round in
    assert outcome(there) == outcome(here)
    for sql in (
        "select run_id, epoch, decision from rungs order by all",
        f"select run_id, {ROWS} from epochs order by all",
        "select run_id, block, status from runs order by all",
    ):
        assert read(there, sql) == read(here, sql), sql
