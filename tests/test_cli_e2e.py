"""Every command end to end through real worker processes on tiny synthetic studies."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, optlab, write_study

pytestmark = pytest.mark.slow

SLOW = """
name = "slow"
seeds = [0]
[base]
epochs = {epochs}
dataset = {{ name = "synthetic", classes = 4, shape = [32], train_size = 6000, test_size = 64 }}
model = {{ name = "mlp", hidden = [256, 256] }}
optimizer = {{ name = "sgd", lr = 0.01 }}
batch_schedule = {{ name = "constant", batch_size = 8 }}
[[block]]
name = "g"
grid = {{ "optimizer.lr" = {lrs} }}
"""


def slow_study(folder: Path, epochs: int = 40, lrs: str = "[0.01, 0.02]") -> Path:
    return write_study(folder, text=SLOW.format(epochs=epochs, lrs=lrs), name="slow.toml")


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "optlab", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 300.0, every: float = 0.2, proc=None):
    """Poll ``predicate`` until it holds; ``timeout`` is a safety net, never a wait the test
    counts on. When it runs out with ``proc`` (the optlab process the test waits on)
    given, what that process printed is in the error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = predicate()  # it ended: what it left is all there will be
            if value:
                return value
            break
        time.sleep(every)
    said = ""
    if proc is not None:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate()
        said = f": optlab exited {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    raise AssertionError(f"condition not met in time{said}")


def journal_epochs(folder: Path) -> int:
    total = 0
    for journal in (folder / "optlab.runs").glob("*/events.jsonl"):
        total += journal.read_text().count('"type":"epoch"')
    return total


@pytest.fixture(scope="session")  # made once a worker, however its tests are spread
def finished(tmp_path_factory) -> Path:
    """A tiny study run once; tests below read it."""
    folder = tmp_path_factory.mktemp("finished")
    write_study(folder)
    proc = optlab("run", "tiny.toml", "--workers", "2", cwd=folder, check=True)
    assert proc.stdout.splitlines()[0] == (
        "tiny: running 8 of 8 runs (0 already finished) on 2 worker(s) [CPU, 1 thread(s) "
        "each]; store optlab.duckdb"
    )
    assert proc.stdout.splitlines()[-1].endswith(": 8 done")
    return folder


def test_run_again_runs_nothing_and_says_so(finished):
    proc = optlab("run", "tiny.toml", cwd=finished, check=True)
    assert proc.stdout == "Nothing to run: all 8 runs of tiny are finished.\n"


def test_show_counts_done_and_lists_axes(finished):
    proc = optlab("show", "tiny.toml", cwd=finished, check=True)
    assert proc.stdout.splitlines() == [
        "study tiny (tiny.toml): 8 runs, 8 done in optlab.duckdb",
        "block grid: 8 runs, 8 done",
        "  seeds: 0, 1",
        "  optimizer.lr: 0.01, 0.1",
        "  optimizer.weight_decay: 0, 0.01",
    ]
    rows = [
        json.loads(line)
        for line in optlab(
            "show", "tiny.toml", "--format", "json", cwd=finished
        ).stdout.splitlines()
    ]
    assert len(rows) == 8
    assert set(rows[0]) == {
        "run_id",
        "study",
        "block",
        "seed",
        "optimizer.lr",
        "optimizer.weight_decay",
        "status",
    }
    assert {r["status"] for r in rows} == {"done"}


def test_status_counts_by_state(finished):
    lines = optlab("status", cwd=finished, check=True).stdout.splitlines()
    assert lines[0].split() == [
        "study",
        "runs",
        "pending",
        "running",
        "done",
        "failed",
        "diverged",
        "stopped",
        "interrupted",
        "progress",
        "eta",
    ]
    assert lines[1].split() == ["tiny", "8", "0", "0", "8", "0", "0", "0", "0", "100%", "-"]


def test_query_formats_and_out_file(finished):
    sql = (
        "select lr, wd, count(*) as n from epochs join runs using (run_id) "
        "group by all order by lr, wd"
    )
    as_csv = optlab("query", sql, "--format", "csv", cwd=finished, check=True).stdout
    assert list(csv.reader(io.StringIO(as_csv))) == [
        ["lr", "wd", "n"],
        ["0.01", "0.0", "4"],
        ["0.01", "0.01", "4"],
        ["0.1", "0.0", "4"],
        ["0.1", "0.01", "4"],
    ]
    as_json = json.loads(optlab("query", sql, "--format", "json", cwd=finished).stdout)
    assert as_json[0] == {"lr": 0.01, "wd": 0.0, "n": 4}
    md = optlab("query", sql, "--format", "markdown", cwd=finished).stdout.splitlines()
    assert md[:3] == ["| lr | wd | n |", "|---|---|---|", "| 0.01 | 0 | 4 |"]
    table = optlab("query", sql, cwd=finished).stdout.splitlines()
    assert table[0].split() == ["lr", "wd", "n"] and table[-1] == "(4 rows)"
    proc = optlab("query", sql, "--format", "csv", "--out", "q.csv", cwd=finished, check=True)
    assert proc.stdout == "4 rows written to q.csv\n"
    assert (finished / "q.csv").read_text() == as_csv


def test_query_is_read_only_and_sql_errors_are_one_line(finished):
    proc = optlab("query", "drop table epochs", cwd=finished)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: SQL: ") and proc.stderr.count("\n") == 1
    assert "refused: optlab query only reads" in proc.stderr
    store = finished / "optlab.duckdb"
    before = store.read_bytes()
    writes = [
        f"copy (select 1 as a) to '{store}'",
        "copy epochs to 'out.csv'",
        "export database 'dump'",
        "install httpfs",
        "load httpfs",
        "attach 'other.duckdb' as o",
        "set threads = 1",
        "explain analyze copy (select 1) to 'x.csv'",
        "create table t as select 1",
        "insert into epochs select * from epochs",
        "select 1; drop table epochs",
    ]
    for sql in writes:
        proc = optlab("query", sql, cwd=finished)
        assert proc.returncode == 1, sql
        assert "refused" in proc.stderr and proc.stderr.count("\n") == 1, (sql, proc.stderr)
    assert store.read_bytes() == before
    assert not any(
        (finished / name).exists() for name in ("out.csv", "dump", "other.duckdb", "x.csv")
    )
    for sql in ("", ";", "  ;  "):
        proc = optlab("query", sql, cwd=finished)
        assert proc.returncode == 1 and proc.stderr.startswith("Error: SQL: nothing to run"), sql
    # reading the user's own files stays allowed
    (finished / "mine.csv").write_text("lr,note\n0.01,mine\n")
    joined = optlab(
        "query",
        "select m.note, count(*) as n from runs r join "
        "read_csv('mine.csv') m on r.lr = m.lr group by all",
        "--format",
        "csv",
        cwd=finished,
        check=True,
    )
    assert joined.stdout == "note,n\nmine,4\n"
    now = optlab("query", "select now() as t", "--format", "csv", cwd=finished, check=True)
    assert now.stdout.startswith("t\n20")
    proc = optlab("query", "selec 1", cwd=finished)
    assert proc.stderr == (
        'Error: SQL: Parser Error: syntax error at or near "selec" (LINE 1: selec 1)\n'
    )
    assert (
        optlab("query", "select count(*) as n from epochs", "--format", "csv", cwd=finished).stdout
        == "n\n16\n"
    )


def test_every_epoch_row_and_run_has_provenance(finished):
    rows = json.loads(
        optlab(
            "query",
            "select seed, status, torch_version, device, threads, optlab_version, "
            "hostname, git_sha is not null or true as sha_ok, epochs from runs",
            "--format",
            "json",
            cwd=finished,
        ).stdout
    )
    assert all(r["torch_version"] and r["device"].startswith("cpu") for r in rows)
    assert {r["threads"] for r in rows} == {1}
    fields = optlab(
        "query", "select * from epochs limit 1", "--format", "json", cwd=finished
    ).stdout
    assert set(json.loads(fields)[0]) == {
        "run_id",
        "epoch",
        "step",
        "samples",
        "sfo",
        "epoch_lr",
        "epoch_batch_size",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "seconds",
        "eval_seconds",
        "val_loss",
        "val_acc",
        "probe_seconds",
        "sfo_full_batches",
        "comm_rounds",
    }


@pytest.mark.parametrize("suffix", [".html", ".png", ".svg"])
def test_heatmap_files(finished, suffix):
    out = f"hm{suffix}"
    proc = optlab(
        "plot",
        "heatmap",
        "--study",
        "tiny",
        "--x",
        "optimizer.lr",
        "--y",
        "optimizer.weight_decay",
        "--out",
        out,
        cwd=finished,
        check=True,
    )
    assert proc.stdout == f"heatmap of 4 cells written to {out} (its SQL: {out}.sql)\n"
    data = (finished / out).read_bytes()
    if suffix == ".html":
        text = data.decode()
        assert "<script src=" not in text  # Vega is inlined: the page opens offline
        assert "vega-embed" in text.lower() or "vegaEmbed" in text
    elif suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    else:
        assert data.lstrip().startswith(b"<svg") and b"optimizer.lr" in data
    sql = (finished / f"{out}.sql").read_text()
    again = json.loads(optlab("query", sql, "--format", "json", cwd=finished).stdout)
    assert len(again) == 4 and all(r["done"] == 2 for r in again)


def test_heatmap_bad_axis_and_metric(finished):
    proc = optlab(
        "plot", "heatmap", "--x", "optimizer.momentum", "--y", "optimizer.lr", cwd=finished
    )
    assert proc.stderr == (
        "Error: --x optimizer.momentum: the study does not vary it; it varies "
        "optimizer.lr, optimizer.weight_decay\n"
    )
    proc = optlab("plot", "heatmap", "--metric", "best_accuracy", cwd=finished)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: --metric 'best_accuracy': ")


def test_growing_a_study_runs_only_the_new_cells(tmp_path):
    write_study(tmp_path, lrs="[0.1]")
    optlab("run", "tiny.toml", cwd=tmp_path, check=True)
    write_study(tmp_path, lrs="[0.1, 0.3]")
    proc = optlab("run", "tiny.toml", cwd=tmp_path, check=True)
    assert proc.stdout.splitlines()[0].startswith("tiny: running 4 of 8 runs (4 already finished)")


def test_a_changed_study_counts_only_its_current_runs(tmp_path):
    write_study(tmp_path, lrs="[0.1]")
    optlab("run", "tiny.toml", cwd=tmp_path, check=True)
    proc = optlab("run", "tiny.toml", "--set", "epochs=1", cwd=tmp_path, check=True)
    assert proc.stdout.splitlines()[0].startswith("tiny: running 4 of 4 runs")
    row = optlab("status", "tiny", cwd=tmp_path).stdout.splitlines()[1].split()
    assert row[:5] == ["tiny", "4", "0", "0", "4"]
    assert (
        optlab(
            "query", "select count(*) as n from run_state", "--format", "csv", cwd=tmp_path
        ).stdout
        == "n\n8\n"
    )  # the earlier runs are kept


def test_parts_of_a_study_run_one_after_another_add_up(tmp_path):
    """Seed 0 today, seed 1 next week, into one store: the study is both, status says how
    much of the file's matrix is done, and the study record (what rebuild reads) holds both."""
    write_study(tmp_path)
    optlab("run", "tiny.toml", "--set", "seeds=[0]", cwd=tmp_path, check=True)
    part = optlab("status", "tiny", cwd=tmp_path, check=True).stdout
    assert "tiny: 4 of the study file's 8 runs finished (4 of them run so far, in parts)" in part
    proc = optlab("run", "tiny.toml", "--set", "seeds=[1]", cwd=tmp_path, check=True)
    assert proc.stdout.splitlines()[0].startswith("tiny: running 4 of 4 runs")
    status = optlab("status", "tiny", cwd=tmp_path, check=True).stdout
    assert status.splitlines()[1].split()[:4] == ["tiny", "8", "0", "0"]
    assert "in parts" not in status  # the whole matrix is run
    sql = "select seed, count(*) as n from runs where study = 'tiny' group by seed order by seed"
    query = optlab("query", sql, "--format", "csv", cwd=tmp_path, check=True).stdout
    assert query == "seed,n\n0,4\n1,4\n"
    assert "Nothing to run" in optlab("run", "tiny.toml", cwd=tmp_path, check=True).stdout
    optlab("rebuild", cwd=tmp_path, check=True)
    assert optlab("query", sql, "--format", "csv", cwd=tmp_path, check=True).stdout == query


def test_several_studies_run_together_on_one_pool(tmp_path):
    """seed 001's run_all_experiments.sh --parallel: studies side by side on one pool into
    one store, each under its own name; a run they share trains once."""
    write_study(tmp_path)
    other = TINY.format(lrs="[0.1, 0.3]").replace('name = "tiny"', 'name = "other"')
    write_study(tmp_path, text=other, name="other.toml")
    proc = optlab("run", "tiny.toml", "other.toml", cwd=tmp_path, check=True)
    assert proc.stdout.splitlines()[0].startswith("tiny + other: running 12 of 12 runs")
    status = optlab("status", cwd=tmp_path, check=True).stdout.splitlines()
    assert [line.split()[:5] for line in status[1:3]] == [
        ["other", "8", "0", "0", "8"],
        ["tiny", "8", "0", "0", "8"],
    ]
    sessions = optlab(
        "query", "select study from sessions order by study", "--format", "csv", cwd=tmp_path
    ).stdout
    assert sessions == "study\nother\ntiny\n"
    again = optlab("run", "tiny.toml", "other.toml", cwd=tmp_path, check=True)
    assert again.stdout.startswith("Nothing to run: all 12 runs of tiny + other are finished")
    twice = optlab("run", "tiny.toml", "tiny.toml", cwd=tmp_path)
    assert twice.returncode == 2
    assert twice.stderr == "Error: study 'tiny' is given twice; give each study once\n"


def test_failed_and_diverged_runs(tmp_path):
    write_study(
        tmp_path,
        text="""
        name = "bad"
        [base]
        epochs = 2
        dataset = { name = "synthetic", classes = 3, shape = [6], train_size = 32, test_size = 8 }
        model = { name = "mlp", hidden = [4] }
        optimizer = { name = "sgd", lr = 0.1 }
        [[block]]
        name = "g"
        grid = { "optimizer.lr" = [0.1, 1e20], model = [{ name = "mlp" }, { name = "cnn" }] }
        """,
    )
    proc = optlab("run", "tiny.toml", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[-1].endswith(": 1 diverged, 1 done, 2 failed")
    assert "ValueError: cnn needs image input (C, H, W); this dataset gives (6,)" in proc.stderr
    assert "log: optlab.runs/" in proc.stderr
    log = next((tmp_path / "optlab.runs").glob("*/log.txt"))
    assert log.read_text().startswith("optlab worker")
    status = optlab("status", "bad", cwd=tmp_path).stdout
    assert status.count("bad failed ") == 2 and status.count("bad diverged ") == 1
    proc = optlab(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "model",
        "--out",
        "h.svg",
        cwd=tmp_path,
        check=True,
    )
    svg = (tmp_path / "h.svg").read_text()
    assert "1 diverged" in svg and "1 failed" in svg
    again = optlab("run", "tiny.toml", cwd=tmp_path)
    assert again.stdout == (
        "Nothing to run: all 4 runs of bad are finished; 2 failed "
        "(run again with --retry-failed).\n"
    )
    retried = optlab("run", "tiny.toml", "--retry-failed", cwd=tmp_path)
    assert retried.stdout.splitlines()[0].startswith("bad: running 2 of 4 runs")


def test_each_worker_gets_its_own_gpu_environment(tmp_path):
    write_study(tmp_path)
    optlab(
        "run",
        "tiny.toml",
        "--gpus",
        "0,1",
        "--per-gpu",
        "2",
        cwd=tmp_path,
        check=True,
        env={"OPTLAB_GPU_COUNT": "2"},
    )
    rows = json.loads(
        optlab(
            "query",
            "select distinct worker, cuda_visible_devices, threads from runs order by worker",
            "--format",
            "json",
            cwd=tmp_path,
        ).stdout
    )
    assert rows, "no runs recorded"
    for row in rows:
        gpu = row["worker"].removeprefix("gpu").split("/")[0]
        assert row["cuda_visible_devices"] == gpu
        assert row["threads"] == max(1, (os.cpu_count() or 1) // 4)
    assert {r["worker"] for r in rows} <= {"gpu0/0", "gpu0/1", "gpu1/0", "gpu1/1"}


def test_a_dead_worker_fails_only_its_run_and_is_replaced(tmp_path):
    slow_study(tmp_path, epochs=200, lrs="[0.01, 0.02, 0.03]")
    proc = start(["run", "slow.toml", "--workers", "1"], tmp_path)
    wait_for(lambda: journal_epochs(tmp_path) >= 1)
    worker = wait_for(lambda: workers_of(proc.pid))
    os.kill(worker[0], signal.SIGKILL)
    # the other runs would take long: once a new worker is busy, stop the study
    wait_for(lambda: len(list((tmp_path / "optlab.runs").glob("*/events.jsonl"))) >= 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "died (killed by SIGKILL) during the run" in err
    row = optlab("status", "slow", cwd=tmp_path).stdout.splitlines()[1].split()
    study, runs, pending, running, done, failed, diverged, stopped, interrupted = row[:9]
    assert (runs, running, done, failed, diverged) == ("3", "0", "0", "1", "0")
    assert int(pending) + int(interrupted) == 2  # the others: resumable


def test_status_and_query_work_while_a_study_runs(tmp_path):
    slow_study(tmp_path)
    proc = start(["run", "slow.toml", "--workers", "1"], tmp_path)
    worker = None
    try:
        wait_for(lambda: journal_epochs(tmp_path) >= 1, every=0.02)

        def stored() -> int:
            q = optlab("query", "select count(*) from epochs", "--format", "csv", cwd=tmp_path)
            return int(q.stdout.split()[1])

        # An epoch in the store (a worker stopped between its journal and its report would
        # keep it from the coordinator), then its worker paused: no run can finish
        # meanwhile, however fast or loaded the machine is.
        wait_for(lambda: stored() > 0, every=0.05, proc=proc)
        (worker,) = wait_for(lambda: workers_of(proc.pid))
        os.kill(worker, signal.SIGSTOP)
        journals = (tmp_path / "optlab.runs").glob("*/events.jsonl")
        assert not any('"type":"finished"' in j.read_text() for j in journals)
        wait_for(lambda: "running on 1 worker" in optlab("status", cwd=tmp_path).stdout)
        status = optlab("status", cwd=tmp_path)
        assert status.returncode == 0
        # an ETA from the first finished epoch, before any run has finished
        row = optlab("status", cwd=tmp_path).stdout.splitlines()[1].split()
        assert row[4] == "0" and re.fullmatch(r"\d+m\d\ds|\d+h\d\dm", row[-1]), row
        q = optlab("query", "select count(*) as n from epochs", "--format", "csv", cwd=tmp_path)
        assert q.returncode == 0 and q.stdout.startswith("n\n")
        assert stored() > 0
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGCONT)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def workers_of(coordinator: int) -> list[int]:
    """The live optlab workers under a coordinator (forked from its fork server, they are
    its grandchildren), by the name each gives itself."""
    parents, names = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        state, parent = rest.split()[:2]
        if state != "Z":
            pid = int(stat.parent.name)
            parents[pid], names[pid] = int(parent), name
    below, todo = set(), [coordinator]
    while todo:
        here = todo.pop()
        kids = {p for p, parent in parents.items() if parent == here} - below
        below |= kids
        todo += kids
    return sorted(p for p in below if names[p] == "optlab-worker")


def installed_example(site: Path) -> dict[str, str]:
    """plugins/optlab-example as pip would install it, seen through entry points, without
    touching this environment: its metadata in a folder on PYTHONPATH (for the processes
    the test starts only)."""
    import tomllib

    project = tomllib.loads((ROOT / "plugins" / "optlab-example" / "pyproject.toml").read_text())[
        "project"
    ]
    info = site / f"optlab_example-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
            for group, eps in project["entry-points"].items()
        )
    )
    src = ROOT / "plugins" / "optlab-example" / "src"
    return {"PYTHONPATH": os.pathsep.join([str(site), str(src)])}


def test_a_third_party_plugin_is_discovered_and_runs(tmp_path):
    env = installed_example(tmp_path / "site")
    listed = optlab("plugins", "optimizer", cwd=tmp_path, env=env, check=True).stdout
    assert (
        "optimizer signsgd (optlab-example): signSGD: step along the sign of the "
        "(momentum-averaged) gradient"
    ) in listed
    assert "optimizer sophia (optlab-example): Sophia-H" in listed
    assert (
        "probe batch_loss (optlab-example): loss and accuracy on the probe batch"
        in optlab("plugins", "probe", cwd=tmp_path, env=env, check=True).stdout
    )
    write_study(tmp_path)
    proc = optlab(
        "run",
        "tiny.toml",
        "--set",
        'optimizer={name="signsgd", lr=0.01}',
        "--set",
        'probes=[{name="batch_loss", epochs=[0, 2], batch=16}]',
        "--set",
        "block.0.grid={}",
        cwd=tmp_path,
        env=env,
        check=True,
    )
    assert proc.stdout.splitlines()[-1].endswith(": 2 done")
    got = optlab(
        "query", "select distinct optimizer from runs", "--format", "csv", cwd=tmp_path
    ).stdout
    assert got == "optimizer\nsignsgd\n"
    probes = optlab(
        "query",
        "select epoch, key, count(*) as n from probes group by all order by all",
        "--format",
        "csv",
        cwd=tmp_path,
    ).stdout
    assert probes == "epoch,key,n\n0,accuracy,2\n0,loss,2\n2,accuracy,2\n2,loss,2\n"
    # and this environment never saw it
    assert "signsgd" not in optlab("plugins", "optimizer", cwd=tmp_path).stdout
