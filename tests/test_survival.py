"""What survives what, through real processes: kill -9 of the coordinator or of a worker, a
stopped worker, Ctrl-Cs, a busy store, a full disk, a damaged store. After each, running the
study again must give exactly the epoch rows and probe values of a run never interrupted."""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.conftest import optlab, write_study
from tests.test_cli_e2e import start, wait_for, workers_of

pytestmark = pytest.mark.slow

STUDY = """
name = "long"
seeds = [0]
[base]
epochs = {epochs}
checkpoint = {{ every_epochs = 1 }}
save_weights = "final"
dataset = {{ name = "synthetic", classes = 4, shape = [32], train_size = 1500, test_size = 200 }}
model = {{ name = "mlp", hidden = [{width}, {width}] }}
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9 }}
batch_schedule = {{ name = "constant", batch_size = 16 }}
probes = [{{ name = "distance_from_init" }}, {{ name = "hessian_trace", vectors = 2 }}]
[[block]]
name = "g"
grid = {{ "optimizer.lr" = [0.01, 0.02] }}
"""
COLUMNS = (
    "run_id, epoch, step, samples, sfo, epoch_lr, epoch_batch_size, train_loss, "
    "train_acc, test_loss, test_acc, val_loss, val_acc"
)


EPOCHS = 5  # each of the two runs: enough for kills between checkpoints and epochs


def study(folder: Path, width: int = 512, epochs: int = EPOCHS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_study(folder, text=STUDY.format(width=width, epochs=epochs), name="long.toml")


def results(folder: Path) -> tuple[list, list]:
    con = duckdb.connect(str(folder / "optlab.duckdb"), read_only=True)
    try:
        epochs = con.execute(f"select {COLUMNS} from epochs order by run_id, epoch").fetchall()
        probes = con.execute(
            "select run_id, epoch, step, probe, key, value from probes order by all"
        ).fetchall()
    finally:
        con.close()
    return epochs, probes


def statuses(folder: Path) -> dict[str, str]:
    proc = optlab(
        "query", "select run_id, status from runs", "--format", "csv", cwd=folder, check=True
    )
    return dict(line.split(",") for line in proc.stdout.splitlines()[1:])


def events_in_journals(folder: Path, kind: str) -> int:
    return sum(
        j.read_text().count(f'"type":"{kind}"')
        for j in (folder / "optlab.runs").glob("*/events.jsonl")
    )


def runs_with(folder: Path, kind: str) -> int:
    """How many runs have journaled an event of this kind."""
    return sum(
        f'"type":"{kind}"' in j.read_text() for j in (folder / "optlab.runs").glob("*/events.jsonl")
    )


def busy_worker(coordinator: int) -> int:
    """A worker process of the coordinator (not a zombie)."""
    return wait_for(lambda: next(iter(workers_of(coordinator)), None))


def gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def kill_during_a_checkpoint_write(folder: Path) -> bool:
    """Start the study and kill -9 it all (workers first, as a machine that dies) as soon as
    a checkpoint is being written; True when the torn temporary file was left behind."""
    proc = start(["run", "long.toml", "--workers", "2"], folder)
    workers = wait_for(lambda: len(workers_of(proc.pid)) == 2 and workers_of(proc.pid))
    checkpoints = folder / "optlab.checkpoints"
    deadline = time.monotonic() + 60
    torn: list[Path] = []
    while not torn and proc.poll() is None and time.monotonic() < deadline:
        torn = list(checkpoints.glob("*/.*.tmp-*"))
        time.sleep(0.0005)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.communicate()
    wait_for(lambda: gone(workers))
    if not torn:  # every write missed (a fast machine): the next try starts the study afresh
        for path in folder.glob("optlab.*"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return any(p.exists() for p in torn)


def test_kill_9_of_the_coordinator_at_random_moments_loses_nothing(tmp_path, reference):
    study(tmp_path)
    # First, as a machine dying in the middle of a checkpoint write (tried until it lands
    # there: the write takes milliseconds).
    assert any(kill_during_a_checkpoint_write(tmp_path) for _ in range(3))
    rng = random.Random(8)
    moments = ["after a checkpoint", "random"]
    for i, moment in enumerate(moments):
        proc = start(["run", "long.toml", "--workers", "2"], tmp_path)
        kind = "checkpoint" if moment == "after a checkpoint" else "epoch"
        target = events_in_journals(tmp_path, kind) + (1 if i == 0 else rng.randint(1, 3))
        wait_for(lambda k=kind, t=target: events_in_journals(tmp_path, k) >= t, every=0.01)
        if i == 1:
            second_writer_through_a_symlink_is_refused(tmp_path, proc)
        if moment == "random":  # somewhere in the next epoch: training, evaluation or probes
            time.sleep(rng.uniform(0.0, 0.4))
        workers = workers_of(proc.pid)
        proc.kill()
        proc.communicate()
        wait_for(lambda w=workers: gone(w))
        if i == 0:
            status = optlab("status", cwd=tmp_path).stdout
            assert "long: interrupted (writer gone: pid " in status
            assert "run the study again to resume" in status
            assert "resumes from epoch " in status
    # The last attempt: one worker, so two threads per run unless each run keeps its own.
    final = optlab("run", "long.toml", "--workers", "1", cwd=tmp_path, check=True)
    # What the killed coordinator's workers journaled, the next run writes first.
    assert "an earlier session left unfinished (" in final.stdout
    assert "epochs from their journals)" in final.stdout
    assert "resume from their last checkpoint" in final.stdout
    assert results(tmp_path) == reference
    assert set(statuses(tmp_path).values()) == {"done"}
    threads = optlab(
        "query", "select distinct threads from runs", "--format", "csv", cwd=tmp_path
    ).stdout
    assert threads == "threads\n1\n"
    assert not list((tmp_path / "optlab.checkpoints").glob("*/.*.tmp-*"))


def second_writer_through_a_symlink_is_refused(folder: Path, first: subprocess.Popen) -> None:
    """Another path to the same store finds the same lock: while ``first`` writes, a
    second writer through a symlink is refused."""
    (folder / "link.duckdb").symlink_to(folder / "optlab.duckdb")
    lock = folder / "optlab.duckdb.lock"
    wait_for(lambda: f'"pid": {first.pid},' in lock.read_text(), every=0.05)
    second = optlab("run", "long.toml", "--store", "link.duckdb", cwd=folder)
    assert second.returncode == 1
    assert f"another optlab process (pid {first.pid} " in second.stderr


def test_a_worker_that_crashes_leaves_its_traceback_and_its_run_resumes(tmp_path, reference):
    study(tmp_path)
    # Two workers, as the reference had (a run's thread count is part of its numbers).
    proc = start(["run", "long.toml", "--workers", "2"], tmp_path)
    # Both runs have a checkpoint, whichever worker crashes (one may start an epoch late).
    wait_for(lambda: runs_with(tmp_path, "checkpoint") == 2, every=0.02)
    os.kill(busy_worker(proc.pid), signal.SIGSEGV)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "died (killed by SIGSEGV) during the run" in err
    log = next(
        p
        for p in (tmp_path / "optlab.runs").glob("*/log.txt")
        if "Segmentation fault" in p.read_text()
    )
    assert "Fatal Python error: Segmentation fault" in log.read_text()
    status = optlab("status", cwd=tmp_path).stdout
    assert "(--retry-failed resumes from epoch " in status
    # (A worker killed at a random moment: tests/test_cli_e2e.py's dead worker.)
    optlab("run", "long.toml", "--retry-failed", "--workers", "2", cwd=tmp_path, check=True)
    assert results(tmp_path) == reference


def test_a_stopped_worker_is_killed_after_the_stall_timeout(tmp_path, reference):
    study(tmp_path)
    # A worker is forked with torch imported, and the clock starts with its task: the
    # timeout still leaves a loaded machine's worker time to build its run.
    proc = start(["run", "long.toml", "--workers", "2", "--stall-timeout", "6"], tmp_path)
    wait_for(lambda: events_in_journals(tmp_path, "checkpoint") >= 1, every=0.02, proc=proc)
    stopped = busy_worker(proc.pid)
    os.kill(stopped, signal.SIGSTOP)
    wait_for(lambda: "stopped" in _state(stopped), timeout=5)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert "stalled: no progress for 6 s (stopped or hung), so it was killed" in err
    assert list(statuses(tmp_path).values()).count("failed") == 1
    # Two workers, as the reference had: the stopped worker may not have started its run
    # (no event yet), and a run that starts afresh takes its slot's threads, which alone
    # would be two here and change the probes' sums in their last bits.
    optlab("run", "long.toml", "--retry-failed", "--workers", "2", cwd=tmp_path, check=True)
    assert results(tmp_path) == reference


@pytest.mark.parametrize("presses", [4])  # 2: the same path, cut short
def test_any_number_of_ctrl_cs_ends_cleanly_and_resumably(tmp_path, presses, reference):
    study(tmp_path)
    proc = start(["run", "long.toml", "--workers", "2"], tmp_path)
    wait_for(lambda: events_in_journals(tmp_path, "epoch") >= 1, every=0.02)
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "Interrupted runs are resumable: run the same command again." in out
    before = statuses(tmp_path)
    assert "running" not in before.values()
    optlab("run", "long.toml", "--workers", "2", cwd=tmp_path, check=True)
    assert results(tmp_path) == reference
    # an interrupted run counts two attempts, the one it had and the one that finished it
    attempts = dict(
        line.split(",")
        for line in optlab(
            "query", "select run_id, attempts from runs", "--format", "csv", cwd=tmp_path
        ).stdout.splitlines()[1:]
    )
    assert attempts == {r: "2" if before[r] == "interrupted" else "1" for r in before}


def test_a_reader_holding_the_store_delays_writes_but_loses_nothing(tmp_path, reference):
    study(tmp_path)
    proc = start(["run", "long.toml", "--workers", "2"], tmp_path)
    wait_for(lambda: events_in_journals(tmp_path, "epoch") >= 1, every=0.05)
    # The reader retries while the coordinator holds the file for a write, as optlab's
    # own readers do, then holds it.
    hold = (
        "import duckdb, sys, time\n"
        "for _ in range(400):\n"
        "    try:\n"
        "        c = duckdb.connect('optlab.duckdb', read_only=True)\n"
        "        break\n"
        "    except duckdb.IOException:\n"
        "        time.sleep(0.025)\n"
        "else:\n"
        "    sys.exit('the store stayed busy for 10 s')\n"
        "print('open', flush=True)\n"
        "time.sleep(float(sys.argv[1]))"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", hold, "2.5"], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout.readline() == "open\n"
    out, err = proc.communicate(timeout=180)
    reader.wait()
    assert proc.returncode == 0, err
    assert "busy (another process holds it" in out + err
    assert results(tmp_path) == reference


def test_a_session_that_ends_on_time_exits_75_and_the_same_command_goes_on(tmp_path, reference):
    """--stop-after through a real `optlab run`: no run starts after the deadline, a run
    training then holds at its epoch's end (checkpointed), the command exits 75 saying how
    to go on, and going on gives the rows of a study never stopped."""
    study(tmp_path)
    proc = start(["run", "long.toml", "--workers", "2", "--stop-after", "1s"], tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out + err
    assert "Time is up (--stop-after): to go on, run the same command again" in out
    for journal in (tmp_path / "optlab.runs").glob("*/events.jsonl"):
        last = json.loads(journal.read_text().splitlines()[-1])
        assert last["type"] in ("held", "finished"), last  # never cut mid-epoch
    optlab("run", "long.toml", "--workers", "2", cwd=tmp_path, check=True)
    assert results(tmp_path) == reference


def test_a_full_disk_stops_the_study_cleanly_and_it_resumes(tmp_path, reference):
    study(tmp_path)
    # A file size limit makes every write past it fail as a full disk would (EFBIG): here the
    # first checkpoint of a wide model is too big. The store itself stays under it.
    big = tmp_path / "big"
    study(big, width=1024, epochs=2)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, 6 << 20))

    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "optlab", "run", "long.toml"],
        cwd=big,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=limit,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "disk full" in proc.stdout + proc.stderr
    assert "stopped" in proc.stdout.splitlines()[-1]
    states = statuses(big)
    assert "running" not in states.values() and "interrupted" in states.values()
    done = optlab("run", "long.toml", cwd=big, check=True)
    assert done.stdout.splitlines()[-1].endswith(": 2 done")


def test_a_damaged_store_is_one_line_and_rebuild_restores_every_result(tmp_path, reference):
    study(tmp_path)
    optlab("run", "long.toml", "--workers", "2", cwd=tmp_path, check=True)
    store = tmp_path / "optlab.duckdb"
    shutil.copy(store, tmp_path / "copy.duckdb")
    with open(store, "r+b") as f:
        f.seek(4096 + 16)
        f.write(os.urandom(64))  # the database header
    for args in (["status"], ["query", "select 1"], ["run", "long.toml"]):
        proc = optlab(*args, cwd=tmp_path)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert "`optlab rebuild --store optlab.duckdb` makes" in proc.stderr
    rebuilt = optlab("rebuild", cwd=tmp_path, check=True)
    assert rebuilt.stdout.startswith(
        "Rebuilt optlab.duckdb: 1 studies (long), 2 runs (2 done), "
        f"{2 * EPOCHS} epoch rows from 2 journals"
    )
    assert results(tmp_path) == reference
    assert list(tmp_path.glob("optlab.duckdb.before-rebuild-*"))
    again = optlab("run", "long.toml", cwd=tmp_path, check=True)
    assert again.stdout.startswith("Nothing to run: all 2 runs of long are finished")
    # weights were kept (save_weights = "final"), and rebuild found them again
    path = optlab(
        "weights", next(iter(statuses(tmp_path)))[:6], cwd=tmp_path, check=True
    ).stdout.strip()
    assert Path(path).is_file() and path.endswith("final.pt")
