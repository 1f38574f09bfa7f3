"""Benchmark: the coordinator's cost of successive halving's decisions in a large group.

One block of --points random search points (one seed each), every configuration arriving
at the first rung in turn with a random validation accuracy, as the coordinator hands them
to :class:`~optlab.execution.halving.Halving`; the seconds all the arrivals take (each
one's decision, and sha's final decision of the whole group), in this process, no store.

    python benchmarks/halving_decisions.py [--points 2000] [--kind asha|sha]
    (ROOT=/path/to/an/older/tree python benchmarks/halving_decisions.py: that tree's code)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(os.environ.get("ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT / "src"))

from optlab.execution.halving import Halving  # noqa: E402
from optlab.study.expand import expand  # noqa: E402
from optlab.study.schema import load_study  # noqa: E402

STUDY = """
name = "decisions"
[base]
epochs = 9
dataset = {{ name = "digits", val_fraction = 0.2 }}
model = {{ name = "mlp" }}
optimizer = {{ name = "sgd", lr = 0.1 }}
[[block]]
name = "search"
early_stop = {{ kind = "{kind}" }}
[block.search]
kind = "random"
n = {points}
"optimizer.lr" = {{ log_uniform = [1e-4, 1.0] }}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--kind", default="asha")
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "d.toml"
    path.write_text(textwrap.dedent(STUDY.format(kind=args.kind, points=args.points)))
    plans = expand(load_study(path))
    ids = [r.run_id for r in plans[0].runs]
    halving = Halving(plans, ids, {}, {}, {}, {})
    rng = random.Random(0)
    started = time.perf_counter()
    told = {}
    for run_id in ids:
        halving.epoch(run_id, 1, {"val_acc": rng.random()})
        decisions, _ = halving.reached(run_id, 1)
        told |= {d.run_id: d.decision for d in decisions if d.decision != "wait"}
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(repr(sorted(told.items())).encode()).hexdigest()[:12]
    print(
        f"{args.kind} {args.points} arrivals: {seconds:.3f} s, {len(told)} decided "
        f"(digest {digest}), {ROOT}"
    )


if __name__ == "__main__":
    main()
