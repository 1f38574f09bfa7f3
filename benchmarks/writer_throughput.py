"""Benchmark: how many events a second the single writer (the coordinator) stores.

Every event of every worker goes through one process, which writes them into DuckDB in
batches (`store.apply_events` in one transaction, about once a second). This feeds it
made-up epoch rows and probe events (one value per key: 1 key, as `full_grad_norm`, or 62
keys, as `grad_norm` per layer of a ResNet-18) for a study of 512 runs, in batches of the
given sizes, into a store file on this machine's disk, and reports events and values per
second, best of --repeat. The baseline, in the same run on the same events, is the
statement-per-row writer optlab used before (``executemany`` for rows, one UPDATE per run
for journal times), on fewer events because it is slow.

    python benchmarks/writer_throughput.py [--batches 100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optlab.events import EPOCH_FIELDS  # noqa: E402
from optlab.store import core as st  # noqa: E402
from tests.synth import make_store  # noqa: E402

STUDY = """
name = "wide"
seeds = 8
[base]
epochs = 1000
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
"optimizer.weight_decay" = [0.0, 1e-5, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
"""


def epoch_events(run_ids: list[str], count: int, start: int) -> list[dict]:
    out = []
    for i in range(count):
        k = start + i
        run_id, epoch = run_ids[k % len(run_ids)], 1 + k // len(run_ids)
        row = {f: 0.5 for f in EPOCH_FIELDS}
        row.update(type="epoch", run_id=run_id, epoch=epoch, step=10 * epoch, time=1e9 + k)
        out.append(row)
    return out


def probe_events(run_ids: list[str], count: int, start: int, keys: int) -> list[dict]:
    values = {("global" if keys == 1 else f"layer{j}"): 0.25 for j in range(keys)}
    return [
        {
            "type": "probe",
            "run_id": run_ids[(start + i) % len(run_ids)],
            "epoch": 1,
            "step": start + i,
            "probe": "grad_norm",
            "values": values,
            "time": 1e9 + i,
        }
        for i in range(count)
    ]


def row_by_row(con, events: list[dict]) -> None:
    """The writer before bulk inserts: a statement per row and per run."""
    epochs = [
        [e["run_id"], *(e.get(f) for f in EPOCH_FIELDS)] for e in events if e["type"] == "epoch"
    ]
    probes = [
        [e["run_id"], e["epoch"], e["step"], e["probe"], k, v]
        for e in events
        if e["type"] == "probe"
        for k, v in e["values"].items()
    ]
    if epochs:
        marks = ", ".join("?" for _ in range(len(EPOCH_FIELDS) + 1))
        con.executemany(f"insert or replace into epochs values ({marks})", epochs)
    if probes:
        con.executemany("insert into probes values (?, ?, ?, ?, ?, ?)", probes)
    times: dict[str, float] = {}
    for e in events:
        times[e["run_id"]] = max(times.get(e["run_id"], 0.0), e["time"])
    for run_id, at in times.items():
        con.execute(
            "update run_state set journal_time = greatest(coalesce(journal_time, 0), "
            "?) where run_id = ?",
            [at, run_id],
        )


def timed(db: Path, batches: list[list[dict]], apply=st.apply_events) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        with st.writing(db) as con:
            apply(con, batch)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="100,1000,10000")
    parser.add_argument("--total", type=int, default=20000, help="events per case")
    parser.add_argument(
        "--baseline-total",
        type=int,
        default=2000,
        help="events per case for the row-by-row baseline",
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]
    print(
        "| events | batch | row by row: events/s | bulk: events/s | bulk: values/s | "
        "speed-up |\n|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = make_store(folder, STUDY, lambda c, s: 0.5, epochs=0)
        with st.reading(db) as con:
            run_ids = [
                r for (r,) in con.execute("select run_id from run_state order by 1").fetchall()
            ]
        cases = [
            ("epoch rows", lambda n, s: epoch_events(run_ids, n, s), 1),
            ("probe, 1 key", lambda n, s: probe_events(run_ids, n, s, 1), 1),
            ("probe, 62 keys", lambda n, s: probe_events(run_ids, n, s, 62), 62),
        ]
        offset = 0
        for name, make, values in cases:
            for size in sizes:
                per_event = {}
                for how, apply, total in (
                    ("before", row_by_row, args.baseline_total),
                    ("bulk", st.apply_events, args.total),
                ):
                    best = float("inf")
                    for _ in range(args.repeat):
                        batches = [
                            make(size, offset + i * size) for i in range(max(1, total // size))
                        ]
                        offset += size * len(batches)
                        best = min(best, timed(db, batches, apply) / (size * len(batches)))
                    per_event[how] = best
                before, bulk = per_event["before"], per_event["bulk"]
                print(
                    f"| {name} | {size} | {1 / before:,.0f} | {1 / bulk:,.0f} | "
                    f"{values / bulk:,.0f} | {before / bulk:.1f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
