"""Benchmark: optlab serve on a large study, and beside a running study's writer.

``pages``: a store holding one study of --runs runs (a 100 x 100 grid, 10 seeds: 100,000),
of which 2,000 have finished (3 epochs each) and 8 are running; the time each request of
the studies page and the study page takes to answer (a fresh app each time: no answer kept
from before), best and worst of --repeat, in this process through Starlette's test client.

``writer``: a study's writer (as the coordinator does: a batch of events about once a
second, each in one transaction that opens the store with a 0.5 s timeout) for --seconds,
alone and then while --pages pages poll a real ``optlab serve`` process every second (the
studies, the study, its runs, its charts, a run's epochs, as the pages do); each batch's
time from asking for the store to commit, and the batches that found it busy.

    python benchmarks/serve_load.py pages [--runs 100000] [--repeat 3]
    python benchmarks/serve_load.py writer [--seconds 30] [--pages 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optlab.errors import StoreBusy  # noqa: E402
from optlab.events import EPOCH_FIELDS  # noqa: E402
from optlab.store import core as st  # noqa: E402
from optlab.study.expand import all_runs, expand  # noqa: E402
from optlab.study.schema import load_study  # noqa: E402

STUDY = """
name = "big"
seeds = {seeds}
[base]
epochs = 3
dataset = {{ name = "synthetic" }}
model = {{ name = "mlp" }}
optimizer = {{ name = "sgd", lr = 0.1 }}
[[block]]
name = "grid"
[block.grid]
"optimizer.lr" = {lrs}
"optimizer.weight_decay" = {wds}
"""


def lives(run_ids: list[str], epochs: int, end: str | None) -> list[dict]:
    events = []
    for run_id in run_ids:
        events.append({"type": "started", "run_id": run_id, "time": 1e9, "provenance": {}})
        for e in range(1, epochs + 1):
            row = {f: 0.5 for f in EPOCH_FIELDS}
            row.update(type="epoch", run_id=run_id, epoch=e, step=10 * e, time=1e9 + e)
            events.append(row)
        if end is not None:
            events.append({"type": end, "run_id": run_id, "time": 1e9 + 10})
    return events


def make(folder: Path, runs: int) -> tuple[Path, list[str]]:
    seeds = max(1, runs // 10_000)
    side = int((runs // seeds) ** 0.5)
    lrs = [round(1e-4 * 1.1**i, 8) for i in range(side)]
    wds = [round(1e-6 * 1.1**i, 10) for i in range(side)]
    path = folder / "big.toml"
    path.write_text(STUDY.format(seeds=seeds, lrs=lrs, wds=wds))
    study = load_study(path)
    plans = expand(study, max_runs=10**6)
    ids = [r.run_id for r in all_runs(plans)]
    store = folder / "optlab.duckdb"
    started = time.perf_counter()
    with st.writing(store) as con:
        st.ensure_schema(con)
        st.register_study(con, study, plans, store, set(ids))
        st.apply_events(con, lives(ids[:2000], 3, "finished") + lives(ids[2000:2008], 1, None))
    print(f"store of {len(ids):,} runs made in {time.perf_counter() - started:.1f} s")
    return store, ids


def pages(args: argparse.Namespace) -> None:
    from starlette.testclient import TestClient

    from optlab.serve.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        store, ids = make(Path(tmp), args.runs)
        requests = [
            ("studies page", "/"),
            ("  /api/studies", "/api/studies"),
            ("study page", "/study/big"),
            ("  /api/studies/big", "/api/studies/big"),
            ("  /api/studies/big/runs", "/api/studies/big/runs"),
            ("  runs sorted by best_test_acc", "/api/studies/big/runs?sort=-best_test_acc"),
            ("  runs sorted by a config column", "/api/studies/big/runs?sort=optimizer.lr"),
            (
                "  runs done, best_test_acc >= 0.5, page 3",
                "/api/studies/big/runs?state=done&min_best_test_acc=0.5&offset=1000",
            ),
            ("  runs of one block and state", "/api/studies/big/runs?state=pending&block=grid"),
            ("  /api/studies/big/charts", "/api/studies/big/charts"),
            ("  /api/studies/big/analyses", "/api/studies/big/analyses"),
        ]
        print(f"| request | best s | worst s (of {args.repeat}) | bytes |")
        print("|---|---|---|---|")
        for label, url in requests:
            times, size = [], 0
            for _ in range(args.repeat):
                client = TestClient(create_app(store), base_url="http://127.0.0.1:8765")
                started = time.perf_counter()
                answer = client.get(url)
                times.append(time.perf_counter() - started)
                assert answer.status_code == 200, (url, answer.text[:300])
                size = len(answer.content)
            print(f"| {label} | {min(times):.3f} | {max(times):.3f} | {size:,} |")


def poll(base: str, urls: list[str], stop: threading.Event, answered: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        for url in urls:
            with urllib.request.urlopen(base + url, timeout=30) as r:
                r.read()
        answered.append(time.perf_counter() - started)
        stop.wait(max(0.0, 1.0 - (time.perf_counter() - started)))


def write_batches(store: Path, ids: list[str], seconds: float) -> tuple[list[float], int]:
    """A batch of 100 epoch rows about every second, as the coordinator writes."""
    took, busy, epoch = [], 0, 3
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        epoch += 1
        batch = []
        for run_id in ids[2000:2100]:
            row = {f: 0.5 for f in EPOCH_FIELDS}
            row.update(type="epoch", run_id=run_id, epoch=epoch, step=epoch, time=1e9 + epoch)
            batch.append(row)
        try:
            with st.writing(store, timeout=0.5) as con:
                st.apply_events(con, batch)
            took.append(time.perf_counter() - started)
        except StoreBusy:
            busy += 1
        time.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
    return took, busy


def writer(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, ids = make(Path(tmp), 10_000)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "optlab", "serve", "--store", str(store), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        base = f"http://127.0.0.1:{port}"
        urls = [
            "/api/studies",
            "/api/studies/big",
            "/api/studies/big/runs",
            "/api/studies/big/charts",
            f"/api/runs/{ids[2000]}/epochs",
        ]
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(base + "/api/studies", timeout=30).read()
                    break
                except OSError:
                    time.sleep(0.2)
            print("| pages polling | batches | median s | 95th s | worst s | found busy |")
            print("|---|---|---|---|---|---|")
            for pages_open in (0, args.pages):
                stop, answered = threading.Event(), []
                pollers = [
                    threading.Thread(target=poll, args=(base, urls, stop, answered), daemon=True)
                    for _ in range(pages_open)
                ]
                for p in pollers:
                    p.start()
                took, busy = write_batches(store, ids, args.seconds)
                stop.set()
                for p in pollers:
                    p.join(30)
                q95 = statistics.quantiles(took, n=20)[-1]
                print(
                    f"| {pages_open} | {len(took)} | {statistics.median(took):.3f} | "
                    f"{q95:.3f} | {max(took):.3f} | {busy} |"
                )
                if answered:
                    print(
                        f"(each page's round of {len(urls)} requests: median "
                        f"{statistics.median(answered):.3f} s over {len(answered)} rounds)"
                    )
        finally:
            server.terminate()
            server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pages")
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    w = sub.add_parser("writer")
    w.add_argument("--seconds", type=float, default=30)
    w.add_argument("--pages", type=int, default=5)
    args = ap.parse_args()
    {"pages": pages, "writer": writer}[args.what](args)


if __name__ == "__main__":
    main()
