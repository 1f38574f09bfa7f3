"""Benchmark: expanding a large study into its runs.

`optlab show`, `optlab run` and `optlab.load_study`'s runs all expand the study first: every
run's config is resolved (each plugin table validated by its params model) and hashed into
its run id. Timed here on this tree and, in the same run on the same study file, on an
older commit of optlab (default: the last one that resolved every run of every seed anew),
each in a fresh process; best of --repeat. Both trees must give the same runs, with the
same ids and configs, in the same order, or the benchmark fails.

    python benchmarks/expand.py [--cells 2500] [--seeds 40] [--baseline-rev REV]

The default is 2,500 cells (a 50 x 50 learning-rate x weight-decay grid) x 40 seeds:
100,000 runs, optlab's default limit of runs a study.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from older_tree import ROOT, measure, older_tree

BASELINE = "1193ceb"  # resolved every run of every seed anew

# Run in a fresh interpreter with the tree to measure first on sys.path.
MEASURE = r"""
import hashlib, json, sys, time
src, study_file = sys.argv[1], sys.argv[2]
sys.path.insert(0, src)
try:  # the stage packages
    from optlab.study.expand import all_runs, expand
    from optlab.study.schema import load_study
except ImportError:  # a tree from before them
    from optlab.expand import all_runs, expand
    from optlab.study import load_study

study = load_study(study_file)
t0 = time.perf_counter()
runs = all_runs(expand(study))
took = time.perf_counter() - t0
digest = hashlib.sha256()
for r in runs:
    digest.update(json.dumps([r.run_id, r.block, r.seed, r.config, r.axes, r.position],
                             sort_keys=True).encode())
print(json.dumps({"runs": len(runs), "seconds": took, "digest": digest.hexdigest()}))
"""

STUDY = """
name = "wide"
seeds = {seeds}
[base]
epochs = 30
dataset = {{ name = "synthetic", classes = 10, shape = [3, 8, 8], train_size = 5000 }}
model = {{ name = "cnn" }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
lr_schedule = {{ name = "cosine", warmup_epochs = 2 }}
probes = [{{ name = "grad_norm", every = 5 }}]
[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = {lrs}
"optimizer.weight_decay" = {wds}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=2500, help="about this many (a square)")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE)
    args = ap.parse_args()
    side = max(1, round(math.sqrt(args.cells)))
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "wide.toml"
        study.write_text(
            STUDY.format(
                seeds=args.seeds,
                lrs=[round(0.001 * 1.1**i, 8) for i in range(side)],
                wds=[0.0] + [round(1e-6 * 1.3**i, 12) for i in range(side - 1)],
            )
        )
        best: dict[str, float] = {}
        digests: dict[str, str] = {}
        with older_tree(args.baseline_rev) as old:
            for _ in range(args.repeat):  # alternate, so both see the same machine
                for name, src in (("baseline", old / "src"), ("this tree", ROOT / "src")):
                    got = measure(MEASURE, src, study)
                    best[name] = min(best.get(name, math.inf), got["seconds"])
                    digests[name] = got["digest"]
                    runs = got["runs"]
    if digests["baseline"] != digests["this tree"]:
        sys.exit("the two trees expand the study differently: not comparable")
    b, n = best["baseline"], best["this tree"]
    print(f"{runs:,} runs ({side * side:,} cells x {args.seeds} seeds); best of {args.repeat}\n")
    print("| expand | baseline s | this tree s | runs/s (this tree) | speed-up |")
    print("|---|---|---|---|---|")
    rate = f"{runs / n:,.0f}"
    print(f"| {args.baseline_rev} vs this tree | {b:.2f} | {n:.2f} | {rate} | {b / n:.1f}x |")


if __name__ == "__main__":
    main()
