"""Benchmark: how long `optlab run` of a large study takes to start, and to stop on Ctrl-C.

Before its first run starts, `optlab run` expands the study, recovers what an earlier
session left, registers every run in the store and plans; on Ctrl-C it marks every
unfinished run. All of that grows with the number of runs, not epochs. Measured here on a
study of tiny runs (so what is timed is optlab, not training), through the real command
in a fresh process, on this tree and, in the same run, on an older commit (a git
worktree, its code first on PYTHONPATH for the command and its workers):

- start, new store: from the command to its "running N of N runs" line;
- Ctrl-C: from SIGINT (sent once the first run is done) to the command's exit;
- start again: the same study run again on that store (every run unfinished).

    python benchmarks/large_study.py [--cells 2500] [--seeds 40] [--baseline-rev REV]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from older_tree import ROOT, older_tree

BASELINE = "1193ceb"  # recovered, expanded and registered run by run

STUDY = """
name = "wide"
seeds = {seeds}
[base]
epochs = 1
dataset = {{ name = "synthetic", classes = 3, shape = [4], train_size = 48, test_size = 24 }}
model = {{ name = "mlp", hidden = [8] }}
optimizer = {{ name = "sgd", lr = 0.1 }}
[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = {lrs}
"optimizer.weight_decay" = {wds}
"""


def session(src: Path, folder: Path) -> tuple[float, float]:
    """Start `optlab run`, stop it with Ctrl-C after its first finished run: seconds to its
    start line, and from the Ctrl-C to its exit."""
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "optlab", "run", "wide.toml", "--workers", "1"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    start = None
    for line in proc.stdout:
        if start is None and ": running " in line:
            start = time.monotonic() - t0
        if line.startswith("[1/"):
            break
    else:
        raise SystemExit(f"optlab run ended before its first run finished (in {folder})")
    t1 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    proc.communicate()
    stop = time.monotonic() - t1
    if proc.returncode != 130:
        raise SystemExit(f"optlab run exited {proc.returncode} after Ctrl-C (in {folder})")
    return start, stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2500, help="about this many (a square)")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--baseline-rev", default=BASELINE)
    args = ap.parse_args()
    side = max(1, round(math.sqrt(args.cells)))
    text = STUDY.format(
        seeds=args.seeds,
        lrs=[round(0.001 * 1.1**i, 8) for i in range(side)],
        wds=[0.0] + [round(1e-6 * 1.3**i, 12) for i in range(side - 1)],
    )
    results: dict[str, tuple[float, float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, older_tree(args.baseline_rev) as old:
        for name, src in (("baseline", old / "src"), ("this tree", ROOT / "src")):
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            (folder / "wide.toml").write_text(text)
            first = session(src, folder)
            again = session(src, folder)
            results[name] = (*first, *again)
    print(f"{side * side * args.seeds:,} runs ({side * side:,} cells x {args.seeds} seeds)\n")
    print("| seconds | baseline | this tree | speed-up |")
    print("|---|---|---|---|")
    whats = ("start, new store", "Ctrl-C to exit", "start again", "Ctrl-C to exit, again")
    for i, what in enumerate(whats):
        b, n = results["baseline"][i], results["this tree"][i]
        print(f"| {what} | {b:.1f} | {n:.1f} | {b / n:.1f}x |")


if __name__ == "__main__":
    main()
