"""Benchmark: the Ray executor against the local pool on the same 20 short runs and slots.

Each executor runs the same study (20 runs: 10 learning rates x 2 seeds of a small MLP on
synthetic data, 4 epochs) into a fresh store with the same slots (``--workers 2`` on the
CPU), alternating, ``--repeat`` times. Reported per executor, as the median over repeats:

- makespan: the wall time of the whole ``optlab run``. ``ray`` starts a local Ray instance
  inside it (as ``optlab run --executor ray`` does without ``--address``); ``ray-joined``
  joins one already running (``ray start --head`` before the repeats, ``--address auto``),
  as on a cluster; both start their actors inside it;
- session: the coordinator's session, from the first run handed out to the last event
  written (Ray's start-up excluded);
- event latency: for every event, the time from the worker writing it to its journal to
  the coordinator receiving it (median and 99th percentile over all events of the
  repeat). The Ray path adds a poll of the actor, Ray's transport and the driver's own
  journal write (fsynced) to the local path's pipe.

    python benchmarks/ray_makespan.py [--repeat 3] [--runs 20] [--epochs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STUDY = """
name = "makespan"
seeds = [0, 1]
[base]
epochs = {epochs}
dataset = {{ name = "synthetic", classes = 4, shape = [32], train_size = 2000, test_size = 200 }}
model = {{ name = "mlp", hidden = [128, 128] }}
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9 }}
batch_schedule = {{ name = "constant", batch_size = 16 }}
[[block]]
name = "g"
grid = {{ "optimizer.lr" = {lrs} }}
"""


def one(executor: str, folder: Path) -> dict[str, float]:
    """Run the study in this process (so the coordinator's sink can be timed)."""
    from optlab.cli import app
    from optlab.execution import coordinator

    latencies: list[float] = []
    original = coordinator.Coordinator.sink

    def timed(self, event):
        if "time" in event and event["type"] not in ("assigned", "failed"):
            latencies.append(time.time() - event["time"])
        return original(self, event)

    coordinator.Coordinator.sink = timed
    cwd = os.getcwd()
    os.chdir(folder)
    t0 = time.perf_counter()
    try:
        where = (
            ["--executor", "ray", "--address", "auto"]
            if executor == "ray-joined"
            else ["--executor", executor]
        )
        app(
            [
                "run",
                "study.toml",
                *where,
                "--gpus",
                "none",
                "--workers",
                "2",
                "--store",
                "optlab.duckdb",
            ],
            standalone_mode=False,
        )
    finally:
        makespan = time.perf_counter() - t0
        os.chdir(cwd)
        coordinator.Coordinator.sink = original
    con = duckdb.connect(str(folder / "optlab.duckdb"), read_only=True)
    (session,) = con.execute("select epoch(ended_at - started_at) from sessions").fetchone()
    (done,) = con.execute("select count(*) from runs where status = 'done'").fetchone()
    con.close()
    latencies.sort()
    return {
        "makespan": makespan,
        "session": session,
        "done": done,
        "lat_median_ms": 1000 * statistics.median(latencies),
        "lat_p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "events": len(latencies),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    lrs = [round(0.005 * (i + 1), 4) for i in range(args.runs // 2)]
    order = ("local", "ray", "ray-joined")
    results: dict[str, list[dict[str, float]]] = {e: [] for e in order}
    ray_cli = str(Path(sys.executable).parent / "ray")
    subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for executor in order if r % 2 == 0 else order[::-1]:
                folder = Path(tmp) / f"{executor}-{r}"
                folder.mkdir()
                (folder / "study.toml").write_text(STUDY.format(epochs=args.epochs, lrs=lrs))
                got = one(executor, folder)
                assert got["done"] == args.runs, got
                results[executor].append(got)
                print(
                    f"repeat {r} {executor}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()),
                    flush=True,
                )
    subprocess.run([ray_cli, "stop"], check=True, capture_output=True)
    med = {e: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for e, rs in results.items()}
    print(f"\n{args.runs} runs x {args.epochs} epochs, 2 CPU slots, median of {args.repeat}:")
    print(
        f"{'':12}{'makespan s':>12}{'session s':>12}{'latency ms (median)':>22}"
        f"{'latency ms (p99)':>18}{'events':>8}"
    )
    for e, m in med.items():
        print(
            f"{e:12}{m['makespan']:12.2f}{m['session']:12.2f}{m['lat_median_ms']:22.2f}"
            f"{m['lat_p99_ms']:18.2f}{m['events']:8.0f}"
        )
    for e in order[1:]:
        print(
            f"{e} / local: makespan {med[e]['makespan'] / med['local']['makespan']:.3f}x, "
            f"session {med[e]['session'] / med['local']['session']:.3f}x"
        )


if __name__ == "__main__":
    main()
