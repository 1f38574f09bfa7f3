"""Benchmark: registering a study and writing whole run lives into the store.

Three writes that grow with the number of runs rather than epochs: `register_study` (every
`optlab run` records the study's runs), `apply_events` on a batch that holds many
runs' whole lives (started, epochs each with a checkpoint, finished), which is what
recovery, `optlab rebuild` and a coordinator whose runs end together write, and `recover`
(every `optlab run` looks at each unfinished run's journal; here one run in 16 was cut
after two epochs and the rest never started). Each is
timed here on this tree and, in the same run on the same events, on an older commit of
optlab (default: the last one that wrote them a statement or a few per run), each in a fresh process
with a fresh store file on this machine's disk; best of --repeat.

    python benchmarks/store_writes.py [--runs 512] [--epochs 5] [--baseline-rev REV]
"""

from __future__ import annotations

import argparse

from older_tree import ROOT, measure, older_tree

BASELINE = "528544f"  # the last tree that wrote these a statement (or a few) per run

# Run in a fresh interpreter with the tree to measure first on sys.path.
MEASURE = r"""
import json, sys, tempfile, time
from pathlib import Path
src, runs, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, src)
from optlab.events import EPOCH_FIELDS
try:  # the stage packages
    from optlab.store import core as st
    from optlab.study.expand import all_runs, expand
    from optlab.study.schema import load_study
except ImportError:  # a tree from before them
    from optlab import store as st
    from optlab.expand import all_runs, expand
    from optlab.study import load_study

folder = Path(tempfile.mkdtemp())
seeds = max(1, runs // 64)
(folder / "s.toml").write_text(f'''
name = "wide"
seeds = {seeds}
[base]
epochs = {epochs}
dataset = {{ name = "synthetic" }}
model = {{ name = "mlp" }}
optimizer = {{ name = "sgd", lr = 0.1 }}
[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
"optimizer.weight_decay" = [0.0, 1e-5, 1e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
''')
study = load_study(folder / "s.toml")
plans = expand(study)
ids = [r.run_id for r in all_runs(plans)]
db = folder / "optlab.duckdb"
with st.writing(db) as con:
    st.ensure_schema(con)
t0 = time.perf_counter()
with st.writing(db) as con:
    st.register_study(con, study, plans, db)
register = time.perf_counter() - t0
events, t = [], 1e9
for run_id in ids:
    t += 1
    events.append({"type": "started", "run_id": run_id, "time": t,
                   "provenance": {"device": "cpu", "threads": 1}, "precision_used": "fp32"})
    for e in range(1, epochs + 1):
        row = {f: 0.5 for f in EPOCH_FIELDS}
        row.update(type="epoch", run_id=run_id, epoch=e, step=10 * e, time=t + e)
        events.append(row)
        events.append({"type": "checkpoint", "run_id": run_id, "epoch": e,
                       "path": f"/c/{run_id}/{e}.pt", "time": t + e})
    events.append({"type": "finished", "run_id": run_id, "time": t + epochs + 1,
                   "elapsed": 1.0, "weights": None})
t0 = time.perf_counter()
with st.writing(db) as con:
    st.apply_events(con, events)
lives = time.perf_counter() - t0
with st.reading(db) as con:
    done, rows = con.execute(
        "select count(*) filter (status = 'done'), (select count(*) from epochs) from run_state"
    ).fetchone()
assert (done, rows) == (len(ids), len(ids) * epochs), (done, rows)

# Recovery at the start of `optlab run` after a crash: every unfinished run is looked at;
# one in 16 was running (its journal holds a start and two epochs), the rest never started.
db = folder / "recover.duckdb"
with st.writing(db) as con:
    st.ensure_schema(con)
    st.register_study(con, study, plans, db)
cut = ids[::16]
for run_id in cut:
    journal = st.journal_path(db, run_id)
    journal.parent.mkdir(parents=True)
    life = [{"type": "started", "run_id": run_id, "time": t, "provenance": {"threads": 1}}]
    life += [{**{f: 0.5 for f in EPOCH_FIELDS}, "type": "epoch", "run_id": run_id,
              "epoch": e, "step": 10 * e, "time": t + e} for e in (1, 2)]
    journal.write_text("".join(json.dumps(ev) + "\n" for ev in life))
with st.writing(db) as con:
    st.apply_events(con, [{"type": "started", "run_id": r, "time": t} for r in cut])
t0 = time.perf_counter()
with st.writing(db) as con:
    recovered = st.recover(con, db, ids)
recover = time.perf_counter() - t0
with st.reading(db) as con:
    states = dict(con.execute("select status, count(*) from run_state group by all").fetchall())
    rows = con.execute("select count(*) from epochs").fetchone()[0]
assert sorted(recovered) == sorted(cut), len(recovered)
assert states == {"interrupted": len(cut), "pending": len(ids) - len(cut)}, states
assert rows == 2 * len(cut), rows
print(json.dumps({"runs": len(ids), "register": register, "lives": lives, "recover": recover}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=512, help="about this many (a multiple of 64)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-rev", default=BASELINE)
    args = ap.parse_args()
    best: dict[str, dict[str, float]] = {}
    with older_tree(args.baseline_rev) as old:
        for _ in range(args.repeat):  # alternate, so both see the same machine
            for side, src in (("baseline", old / "src"), ("this tree", ROOT / "src")):
                got = measure(MEASURE, src, args.runs, args.epochs)
                mine = best.setdefault(side, {})
                for key, value in got.items():
                    mine[key] = min(mine.get(key, value), value)
                runs = got["runs"]
    print(f"{runs} runs, {args.epochs} epochs each; best of {args.repeat}\n")
    print("| write | baseline s | this tree s | runs/s (this tree) | speed-up |")
    print("|---|---|---|---|---|")
    for key, what in (
        ("register", "register_study"),
        ("lives", "apply_events, whole lives"),
        ("recover", "recover, 1 in 16 runs cut"),
    ):
        b, n = best["baseline"][key], best["this tree"][key]
        print(f"| {what} | {b:.3f} | {n:.3f} | {runs / n:,.0f} | {b / n:.1f}x |")


if __name__ == "__main__":
    main()
