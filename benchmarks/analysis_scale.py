"""Benchmark: `optlab analyze` and `optlab plot heatmap` over a store of 1,000,000 epoch
rows from 10,000 runs.

The generator registers a real study (LR 25 x WD 20 x batch size 4 x 5 seeds = 10,000 runs)
through optlab's own schema and bulk-inserts 100 made-up epochs per run, with the optimal
LR inversely proportional to WD and proportional to the batch size, so that the analyses
have something true to find. Each command is timed as a whole process (what a user waits
for, Python start included), best of --repeat, and python -c pass as the floor.

    python benchmarks/analysis_scale.py [--runs-per-seed 2000] [--epochs 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LRS = [round(10 ** (-3 + 3 * i / 24), 6) for i in range(25)]  # 1e-3 .. 1
WDS = [round(10 ** (-5 + 3 * i / 19), 8) for i in range(20)]  # 1e-5 .. 1e-2
BATCHES = [32, 64, 128, 256]
STUDY = f"""
name = "big"
seeds = 5
[base]
epochs = {{epochs}}
dataset = {{{{ name = "synthetic" }}}}
model = {{{{ name = "mlp" }}}}
optimizer = {{{{ name = "sgd", lr = 0.1 }}}}
[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = {LRS}
"optimizer.weight_decay" = {WDS}
"batch_schedule.batch_size" = {BATCHES}
"""


def make_store(folder: Path, epochs: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from optlab.store import core as st
    from optlab.study.expand import expand
    from optlab.study.schema import load_study

    path = folder / "big.toml"
    path.write_text(STUDY.format(epochs=epochs))
    study = load_study(path)
    plans = expand(study)
    db = folder / "optlab.duckdb"
    with st.writing(db) as con:
        st.ensure_schema(con)
        st.register_study(con, study, plans, db)
        # Accuracy: a bowl in log LR around lr* = 1e-5 / wd * bs / 128, plus seed noise,
        # rising over the epochs.
        con.execute(f"""
            insert into epochs
            select r.run_id, e.epoch, e.epoch * 100, e.epoch * 10000, e.epoch * 10000,
                   r.optimizer_lr, r.batch_schedule_batch_size,
                   1 - acc * e.epoch / {epochs}, acc * e.epoch / {epochs},
                   1 - acc * e.epoch / {epochs}, acc * e.epoch / {epochs},
                   0.5, 0.1, null, null, 0.0
            from (select run_id, optimizer_lr, batch_schedule_batch_size,
                         0.9 - 0.05 * pow(log10(optimizer_lr) - log10(1e-5 /
                             optimizer_weight_decay * batch_schedule_batch_size / 128), 2)
                         + 0.002 * (hash(run_id) % 100) / 100.0 as acc
                  from run_state) r
            cross join range(1, {epochs} + 1) e(epoch)""")
        con.execute(
            "update run_state set status = 'done', started_at = now(), "
            "finished_at = now(), train_seconds = 50"
        )
    return db


def timed(cmd: list[str], cwd: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    optlab = str(Path(sys.executable).with_name("optlab"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        db = make_store(folder, args.epochs)
        made = time.perf_counter() - t0
        import duckdb

        con = duckdb.connect(str(db), read_only=True)
        runs, rows = con.execute(
            "select count(*), (select count(*) from epochs) from runs"
        ).fetchone()
        con.close()
        print(f"store: {runs:,} runs, {rows:,} epoch rows, made in {made:.1f} s")
        floor = timed([sys.executable, "-c", "pass"], folder, args.repeat)
        commands = {
            "optlab analyze lr-wd": [optlab, "analyze", "lr-wd"],
            "optlab analyze scaling": [optlab, "analyze", "scaling"],
            "optlab analyze optimal": [optlab, "analyze", "optimal"],
            "optlab plot heatmap (html)": [
                optlab,
                "plot",
                "heatmap",
                "--x",
                "optimizer.lr",
                "--y",
                "optimizer.weight_decay",
            ],
            "optlab query cell_summary": [optlab, "query", "select count(*) from cell_summary"],
        }
        print(f"| command | wall s (best of {args.repeat}) |")
        print("|---|---|")
        print(f"| python -c pass (floor) | {floor:.2f} |")
        for name, cmd in commands.items():
            print(f"| {name} | {timed(cmd, folder, args.repeat):.2f} |")


if __name__ == "__main__":
    main()
