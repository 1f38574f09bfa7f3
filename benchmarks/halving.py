"""Benchmark: successive halving against the full study, on digits.

One search of --points Sobol points (LR, momentum, weight decay, batch size) x --seeds seeds,
an MLP on scikit-learn's digits with a 20% validation split, --epochs epochs (27: rungs at
1, 3 and 9 with reduction 3), run three times into three stores by real `optlab run`s:

- ``full``: every run to its end (`--no-early-stop`);
- ``asha``: ``early_stop = { kind = "asha", ... }``;
- ``sha``: ``early_stop = { kind = "sha", ... }``.

For each: epochs trained, wall time, the configuration each selects (best mean over seeds of
its runs' best val_acc, among configurations trained to the end) with its mean best
test_acc, and whether the full study's best configuration survived to the end.

    python benchmarks/halving.py [--points 64] [--seeds 3] [--epochs 27] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

STUDY = """
name = "halving"
seeds = {seeds}
[base]
epochs = {epochs}
dataset = {{ name = "digits", val_fraction = 0.2 }}
model = {{ name = "mlp", hidden = [64] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
lr_schedule = {{ name = "cosine" }}
batch_schedule = {{ name = "constant", batch_size = 64 }}
[[block]]
name = "search"
{early_stop}
[block.search]
kind = "sobol"
n = {points}
seed = 0
"optimizer.lr" = {{ log_uniform = [1e-3, 1.0] }}
"optimizer.momentum" = {{ uniform = [0.5, 0.99] }}
"optimizer.weight_decay" = {{ log_uniform = [1e-6, 1e-2] }}
"batch_schedule.batch_size" = {{ choice = [32, 64, 128] }}
"""

PER_CONFIG = """
with per_run as (
  select r.run_id, r.status, r.config, r.seed,
         json_extract(r.config, '$.optimizer')::varchar || json_extract(r.config,
           '$.batch_schedule')::varchar as cell,
         max(e.val_acc) as val, max(e.test_acc) as test, count(e.epoch) as epochs,
         any_value(r.config->>'$.epochs')::int as planned
  from runs r join epochs e using (run_id) group by all)
select cell, avg(val) as val, avg(test) as test, bool_and(epochs = planned) as full,
       count(*) as seeds
from per_run group by cell
"""


def run(folder: Path, kind: str | None, args: argparse.Namespace) -> dict:
    folder.mkdir(parents=True)
    early = (
        f'early_stop = {{ kind = "{kind}", metric = "val_acc", min_epochs = 1, reduction = 3 }}'
        if kind
        else ""
    )
    text = STUDY.format(
        seeds=list(range(args.seeds)), epochs=args.epochs, points=args.points, early_stop=early
    )
    (folder / "h.toml").write_text(text)
    started = time.perf_counter()
    command = [sys.executable, "-m", "optlab", "run", "h.toml", "--workers", str(args.workers)]
    subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    con = duckdb.connect(str(folder / "optlab.duckdb"), read_only=True)
    try:
        (epochs,) = con.execute("select count(*) from epochs").fetchone()
        states = dict(con.execute("select status, count(*) from runs group by 1").fetchall())
        configs = con.execute(PER_CONFIG).fetchall()
    finally:
        con.close()
    full = [c for c in configs if c[3]]
    chosen = min(full, key=lambda c: (-c[1], c[0]))  # ties: the smaller key, as ranked below
    return {
        "epochs": epochs,
        "seconds": seconds,
        "states": states,
        "survivors": sorted(c[0] for c in full),
        "chosen": chosen[0],
        "chosen_val": chosen[1],
        "chosen_test": chosen[2],
        "configs": {c[0]: (c[1], c[2]) for c in configs},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="optlab-halving-"))
    results = {
        kind or "full": run(root / (kind or "full"), kind, args) for kind in (None, "asha", "sha")
    }
    full = results["full"]
    ranked = sorted(full["configs"].items(), key=lambda kv: (-kv[1][0], kv[0]))
    rank_of = {cell: i for i, (cell, _) in enumerate(ranked, start=1)}
    best = ranked[0][0]
    print(
        f"{args.points} points x {args.seeds} seeds, {args.epochs} epochs, {args.workers} workers"
    )
    print(
        "| study | epochs trained | share of full | wall s | runs stopped | full study's best "
        "survives | selected: its rank in the full study by val | selected mean test_acc |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['epochs']:,} | {r['epochs'] / full['epochs']:.1%} | "
            f"{r['seconds']:.0f} | {r['states'].get('stopped', 0)} | "
            f"{'yes' if best in r['survivors'] else 'no'} | {rank_of[r['chosen']]} of "
            f"{len(ranked)} | {r['chosen_test']:.4f} |"
        )
    print(
        json.dumps(
            {k: {x: v[x] for x in ("epochs", "seconds", "states")} for k, v in results.items()}
        )
    )


if __name__ == "__main__":
    main()
