"""Benchmark (b): a study of 20 short runs on optlab's warm workers against the seed
projects' way: a fresh Python process per run, a PIL DataLoader (num_workers=0) and one
CSV file per run. Same runs (quickstart CNN on digits, 10 LRs x 2 seeds, 2 epochs), same
number of parallel workers, wall time of the whole study.

    python benchmarks/warm_pool.py [--workers 1] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).parent
LRS = [0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5]
SEEDS = [0, 1]
STUDY = """
name = "bench"
seeds = {seeds}
[base]
epochs = {epochs}
dataset = {{ name = "digits" }}
model = {{ name = "cnn", channels = [16, 32] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
lr_schedule = {{ name = "cosine" }}
batch_schedule = {{ name = "constant", batch_size = 64 }}
[[block]]
name = "lr"
grid = {{ "optimizer.lr" = {lrs} }}
"""


def optlab_study(folder: Path, workers: int, epochs: int) -> float:
    study = folder / "bench.toml"
    study.write_text(STUDY.format(seeds=SEEDS, epochs=epochs, lrs=LRS))
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "optlab",
            "run",
            str(study),
            "--gpus",
            "none",
            "--workers",
            str(workers),
            "--store",
            str(folder / "bench.duckdb"),
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def fresh_processes(folder: Path, workers: int, epochs: int) -> float:
    threads = max(1, (os.cpu_count() or 1) // workers)
    jobs = [
        [
            sys.executable,
            str(HERE / "baseline_loop.py"),
            "--lr",
            str(lr),
            "--seed",
            str(seed),
            "--epochs",
            str(epochs),
            "--threads",
            str(threads),
            "--csv",
            str(folder / f"run_{lr}_{seed}.csv"),
        ]
        for seed in SEEDS
        for lr in LRS
    ]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for proc in pool.map(lambda cmd: subprocess.run(cmd, capture_output=True), jobs):
            proc.check_returncode()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    n = len(LRS) * len(SEEDS)
    print(f"{n} runs of {a.epochs} epochs, CPU, {os.cpu_count()} cores")
    print("| workers | fresh process per run (s) | optlab warm workers (s) | speed-up |")
    print("|---|---|---|---|")
    for workers in a.workers:
        with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
            base = fresh_processes(Path(d1), workers, a.epochs)
            warm = optlab_study(Path(d2), workers, a.epochs)
        print(f"| {workers} | {base:.1f} | {warm:.1f} | {base / warm:.1f}x |")


if __name__ == "__main__":
    main()
