"""Benchmark: a study through ``--executor slurm`` (submitit's local cluster) against the
local pool, with the same slots, and what a time limit's requeue costs.

The same study (20 runs: 10 learning rates x 2 seeds of an MLP on synthetic data, a
checkpoint every epoch) runs into a fresh store, the modes alternating, ``--repeat`` times:

- ``local``: ``optlab run --workers 2`` (one thread each), the study's whole run;
- ``slurm``: ``--executor slurm --executor-opt cluster=local --executor-opt jobs=2
  --workers 1``: two jobs of one slot each, the same two slots; a time limit the study
  never reaches;
- ``slurm-requeue``: the same with a 1-minute time limit and the signal ``--signal-delay``
  seconds before it, so every job is stopped and requeued every ``60 - delay`` seconds, its
  runs held at their epoch's end and resumed from their checkpoints.

Reported: the submitting command's own time (it returns once the jobs are queued), the
makespan (from the command's start to the last run's end in its journal, polled every 0.1
s), the requeues (``held`` events in the journals) and the cost of one: the makespan over
``slurm``'s, divided by the requeues. Every mode's rows are checked equal to ``local``'s.

    python benchmarks/slurm_makespan.py [--repeat 2] [--epochs 12] [--signal-delay 45]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

STUDY = """
name = "makespan"
seeds = [0, 1]
[base]
epochs = {epochs}
checkpoint = {{ every_epochs = 1 }}
dataset = {{ name = "synthetic", classes = 4, shape = [32], train_size = 2000, test_size = 200 }}
model = {{ name = "mlp", hidden = [256, 256] }}
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9 }}
batch_schedule = {{ name = "constant", batch_size = 16 }}
[[block]]
name = "g"
grid = {{ "optimizer.lr" = {lrs} }}
"""
ROWS = "select run_id, epoch, step, train_loss, test_loss, test_acc from epochs order by all"


def optlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optlab", *args], cwd=cwd, capture_output=True, text=True
    )


def journals_ended(folder: Path, runs: int) -> int:
    ended = 0
    for journal in (folder / "optlab.runs").glob("*/events.jsonl"):
        text = journal.read_text()
        ended += text.rstrip().endswith("}") and '"type":"finished"' in text.splitlines()[-1]
    return ended if ended <= runs else runs


def one(mode: str, folder: Path, runs: int, delay: int) -> dict[str, float]:
    args = ["run", "study.toml"]
    if mode == "local":
        args += ["--workers", "2"]
    else:
        args += ["--executor", "slurm", "--workers", "1"]
        args += ["--executor-opt", "cluster=local", "--executor-opt", "jobs=2"]
        if mode == "slurm-requeue":
            args += ["--executor-opt", "time=1", "--executor-opt", f"signal_delay={delay}"]
    start = time.monotonic()
    proc = optlab(*args, cwd=folder)
    command = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: optlab run exited {proc.returncode}:\n{proc.stderr}")
    while journals_ended(folder, runs) < runs:
        time.sleep(0.1)
        if time.monotonic() - start > 1800:
            raise SystemExit(f"{mode}: not finished after 30 minutes")
    makespan = time.monotonic() - start
    optlab("status", cwd=folder)  # folds the journals in
    held = sum(
        j.read_text().count('"type":"held"')
        for j in (folder / "optlab.runs").glob("*/events.jsonl")
    )
    logs = (folder / "optlab.runs" / "slurm").rglob("*_log.err")  # submitit logs there
    signals = sum(p.read_text().count("Caught signal SIGUSR2") for p in logs)
    con = duckdb.connect(str(folder / "optlab.duckdb"), read_only=True)
    try:
        rows = con.execute(ROWS).fetchall()
        done = con.execute("select count(*) from runs where status = 'done'").fetchone()[0]
    finally:
        con.close()
    if done != runs:
        raise SystemExit(f"{mode}: {done} of {runs} runs done in the store")
    return {
        "command": command,
        "makespan": makespan,
        "requeues": signals,
        "held": held,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--signal-delay", type=int, default=45)
    a = parser.parse_args()
    lrs = [round(0.005 * (k + 1), 3) for k in range(10)]
    modes = ("local", "slurm", "slurm-requeue")
    got: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(a.repeat):
        for mode in modes if r % 2 == 0 else tuple(reversed(modes)):
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                (folder / "study.toml").write_text(STUDY.format(epochs=a.epochs, lrs=lrs))
                got[mode].append(one(mode, folder, 2 * len(lrs), a.signal_delay))
                print(mode, {k: v for k, v in got[mode][-1].items() if k != "rows"}, flush=True)
    reference = got["local"][0]["rows"]
    same = all(g["rows"] == reference for m in modes for g in got[m])
    base = statistics.median(g["makespan"] for g in got["slurm"])
    local = statistics.median(g["makespan"] for g in got["local"])
    print(f"\nrows equal to local's in every mode and repeat: {same}")
    print("| mode | command s | makespan s | vs local | requeues | runs held | s per requeue |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        command = statistics.median(g["command"] for g in got[mode])
        makespan = statistics.median(g["makespan"] for g in got[mode])
        requeues = statistics.median(g["requeues"] for g in got[mode])
        held = statistics.median(g["held"] for g in got[mode])
        cost = f"{(makespan - base) / requeues:.2f}" if requeues else "-"
        print(
            f"| {mode} | {command:.2f} | {makespan:.1f} | {makespan / local:.2f}x | "
            f"{requeues:g} | {held:g} | {cost} |"
        )
    print(json.dumps({m: [g["makespan"] for g in got[m]] for m in modes}))


if __name__ == "__main__":
    main()
