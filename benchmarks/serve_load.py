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
    python benchmarks/serve_load.py study [--pages 5] [--seeds 12] [--spell 20]

``study``: the quickstart study (with --seeds seeds: 28 runs each) run by a real `optlab
run` beside a real `optlab serve` of its store, with --pages study pages polling as the
page does (the study every second, its runs every 2 s, its charts every 3 s, its analyses
every 10 s) and none, in turn, --spell seconds each (the server's 20 s window over which
it keeps to its share of a core): the study's epochs a second, and the server's CPU.
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
        lr, wd = round(1e-4 * 1.1**10, 8), round(1e-6 * 1.1**10, 10)
        one_lr = f"min_optimizer.lr={lr!r}&max_optimizer.lr={lr!r}"
        lr_range = f"min_optimizer.lr={lr!r}&max_optimizer.lr={round(1e-4 * 1.1**20, 8)!r}"
        cell = f"optimizer.lr={lr!r}&optimizer.weight_decay={wd!r}&block=grid"
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
            ("  runs of one lr (the page's value filter)", f"/api/studies/big/runs?{one_lr}"),
            ("  runs of an lr range (a brush)", f"/api/studies/big/runs?{lr_range}"),
            ("  runs of a heatmap cell (its link)", f"/api/studies/big/runs?{cell}"),
            ("  /api/studies/big/axes (the filters' values)", "/api/studies/big/axes"),
            ("  /api/studies/big/facts", "/api/studies/big/facts"),
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


# What a study's page asks, and how often (seconds), as static/app.js and bench.js poll.
STUDY_PAGE = (("", 1.0), ("/runs", 2.0), ("/charts", 3.0), ("/analyses", 10.0))


def page_polls(base: str, study: str, stop: threading.Event, asked: list[int]) -> None:
    """One open study page: each of its requests on its own period, as the page polls."""
    due = {path: 0.0 for path, _ in STUDY_PAGE}
    every = dict(STUDY_PAGE)
    for once in ("/axes", "/facts"):
        due[once], every[once] = 0.0, float("inf")
    while not stop.is_set():
        now = time.monotonic()
        for path, when in due.items():
            if when <= now:
                try:
                    with urllib.request.urlopen(
                        f"{base}/api/studies/{study}{path}", timeout=60
                    ) as r:
                        r.read()
                except OSError:
                    pass  # the study not in the store yet: the page asks again
                asked.append(1)
                due[path] = time.monotonic() + every[path]
        stop.wait(0.05)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def epochs_written(folder: Path) -> int:
    """Epochs the study's runs have finished so far, from their journals (the store is
    left alone)."""
    return sum(
        path.read_bytes().count(b'{"type":"epoch"')
        for path in (folder / "optlab.runs").glob("*/events.jsonl")
    )


def study(args: argparse.Namespace) -> None:
    """The quickstart study with --seeds seeds, run by a real `optlab run` beside a real
    `optlab serve` of its store. Once it is under way, --pages study pages poll the server
    for --spell seconds, then none for as long, in turn, to its end: the machine's
    drift (a VM's speed changes by a third within the hour here) falls on both. Each
    spell's epochs a second (from the runs' journals) and the server's CPU."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OPTLAB_STORE", None)
    text = (ROOT / "studies/quickstart.toml").read_text()
    text = text.replace("seeds = [0, 1]", f"seeds = {list(range(args.seeds))}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "quickstart.toml").write_text(text)
        store = folder / "optlab.duckdb"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        run = subprocess.Popen(
            [sys.executable, "-m", "optlab", "run", "quickstart.toml"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        while not store.exists() and run.poll() is None:
            time.sleep(0.05)
        server = subprocess.Popen(
            [sys.executable, "-m", "optlab", "serve", "--store", str(store), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        spells: dict[int, list[tuple[float, int, float, float]]] = {0: [], args.pages: []}
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(base + "/api/studies", timeout=30).read()
                    break
                except OSError:
                    time.sleep(0.1)
            while epochs_written(folder) < 20 and run.poll() is None:
                time.sleep(0.1)  # under way: its workers started, its first epochs written
            pages_open = args.pages
            while run.poll() is None:
                stop, asked = threading.Event(), []
                pollers = [
                    threading.Thread(
                        target=page_polls, args=(base, "quickstart", stop, asked), daemon=True
                    )
                    for _ in range(pages_open)
                ]
                began, epochs, cpu = (
                    time.perf_counter(),
                    epochs_written(folder),
                    cpu_seconds(server.pid),
                )
                mine = time.process_time()  # the pages' own: what five tabs cost a browser
                for p in pollers:
                    p.start()
                stop.wait(args.spell)
                stop.set()
                for p in pollers:
                    p.join(60)
                if run.poll() is not None:
                    break  # the study ended in this spell: a part spell is left out
                took = time.perf_counter() - began
                spells[pages_open].append(
                    (
                        took,
                        epochs_written(folder) - epochs,
                        cpu_seconds(server.pid) - cpu,
                        time.process_time() - mine,
                    )
                )
                pages_open = 0 if pages_open else args.pages
            assert run.wait() == 0
        finally:
            run.kill()
            server.terminate()
            server.wait(10)
    print(
        "| pages polling | spells | epochs/s (each spell) | server CPU s a second "
        "| the pages' own CPU s a second |"
    )
    print("|---|---|---|---|---|")
    rate = {}
    for n, done in spells.items():
        seconds = sum(t for t, *_ in done)
        rates = [e / t for t, e, *_ in done]
        rate[n] = sum(e for _, e, *_ in done) / seconds
        cpu = sum(c for *_, c, _ in done) / seconds
        own = sum(o for *_, o in done) / seconds
        shown = ", ".join(f"{r:.1f}" for r in rates)
        print(f"| {n} | {len(done)} | {rate[n]:.2f} ({shown}) | {cpu:.3f} | {own:.3f} |")
    print(f"the study ran at {rate[args.pages] / rate[0]:.3f} of its speed with {args.pages} pages")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("pages")
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    w = sub.add_parser("writer")
    w.add_argument("--seconds", type=float, default=30)
    w.add_argument("--pages", type=int, default=5)
    q = sub.add_parser("study")
    q.add_argument("--pages", type=int, default=5)
    q.add_argument("--seeds", type=int, default=12)
    q.add_argument("--spell", type=float, default=20.0)
    args = ap.parse_args()
    {"pages": pages, "writer": writer, "study": study}[args.what](args)


if __name__ == "__main__":
    main()
