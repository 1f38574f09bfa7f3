"""optlab serve: the JSON API the page polls (the same answers as the other commands), its
token, its one-line refusals, and the page itself in Debian's Chromium (Playwright)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from optlab.serve import data
from optlab.serve.app import create_app
from optlab.store import core as st
from tests.conftest import ROOT, optlab
from tests.synth import make_store
from tests.test_analyze import SPACES
from tests.test_charts import STUDY, acc

LOCAL = "http://127.0.0.1:8765"  # what a browser on this machine sends as the Host

CHROMIUM = shutil.which("chromium")
OUTPUTS = Path(os.environ.get("OPTLAB_TEST_OUTPUTS") or ROOT / "test-outputs")


@pytest.fixture
def store(tmp_path):
    def status(config, seed):
        o = config["optimizer"]
        return "diverged" if o["lr"] == 0.1 and o["momentum"] == 0.0 else "done"

    return make_store(tmp_path, STUDY, acc, status=status)


@pytest.fixture
def client(store):
    return TestClient(create_app(store, share=1.0), base_url=LOCAL)  # see Served


def test_studies_lists_each_study_with_its_runs_by_state(client):
    (study,) = client.get("/api/studies").json()
    assert study["name"] == "two"
    # The state names optlab status prints, every one of them.
    assert study["counts"] == {
        "pending": 0,
        "running": 0,
        "done": 30,
        "failed": 0,
        "diverged": 6,
        "stopped": 0,
        "interrupted": 0,
    }
    assert (study["runs"], study["epochs_done"], study["epochs_total"]) == (36, 108, 108)
    assert study["workers"] == [] and study["running"] is False


def test_a_study_has_a_cell_per_run_in_study_order(client, cli, store):
    study = client.get("/api/studies/two").json()
    shown = cli("show", str(store.parent / "s.toml"), "--format", "json").stdout.splitlines()
    assert [c["run_id"] for c in study["grid"]] == [json.loads(r)["run_id"] for r in shown]
    diverged = [c for c in study["grid"] if c["status"] == "diverged"]
    assert len(diverged) == 6 and {c["block"] for c in diverged} == {"large"}
    assert study["summarised"] is None


def test_runs_a_gone_writer_left_running_are_interrupted_as_status_tells(tmp_path, monkeypatch):
    from optlab.store import core as st

    def status(config, seed):
        return "running" if seed == 2 else "done"

    store = make_store(tmp_path, STUDY, acc, status=status)
    gone = subprocess.Popen(["true"])  # its pid: a writer that is gone
    gone.wait()
    with st.writing(store) as con:
        st.start_session(con, "gone", "two", 2, 36)
        con.execute("update sessions set pid = ?", [gone.pid])
    client = TestClient(create_app(store), base_url=LOCAL)
    study = client.get("/api/studies/two").json()
    assert study["counts"]["interrupted"] == 12 and study["counts"]["running"] == 0
    cells = [c for c in study["grid"] if c["seed"] == 2]
    assert {c["status"] for c in cells} == {"interrupted"} and len(cells) == 12
    monkeypatch.setattr(data, "GRID_LIMIT", 10)
    counts = TestClient(create_app(store), base_url=LOCAL).get("/api/studies/two").json()["grid"]
    assert {(r["block"], r["status"]): r["runs"] for r in counts} == {
        ("small", "done"): 8,
        ("small", "interrupted"): 4,
        ("large", "done"): 16,
        ("large", "interrupted"): 8,
    }


def test_a_large_study_s_grid_is_counts_and_says_so(client, monkeypatch):
    monkeypatch.setattr(data, "GRID_LIMIT", 10)
    study = client.get("/api/studies/two").json()
    assert study["summarised"].startswith("36 runs: the grid shows counts per block and state")
    assert study["grid"] == [
        {"block": "small", "status": "done", "runs": 12},
        {"block": "large", "status": "done", "runs": 18},
        {"block": "large", "status": "diverged", "runs": 6},
    ]


def test_the_charts_are_the_ones_optlab_plot_draws(client, cli, tmp_path):
    charts = client.get("/api/studies/two/charts").json()
    for kind in ("heatmap", "curves"):
        result = cli("plot", kind, "--out", f"{kind}.html")
        assert result.exit_code == 0, result.output
        sql = (tmp_path / f"{kind}.html.sql").read_text()
        assert charts[kind]["sql"] + ";\n" == sql
        said = result.stdout.split("POOLED over ", 1)
        pooled = said[1].strip() if len(said) > 1 else ""
        assert ", ".join(charts[kind]["pooled"]) == pooled
        assert f"{charts[kind]['rows']} " in result.stdout


def test_a_heatmap_cell_s_link_finds_exactly_its_runs(client):
    charts = client.get("/api/studies/two/charts").json()
    spec = charts["heatmap"]["spec"]
    cells = spec["data"]["values"] if "data" in spec else next(iter(spec["datasets"].values()))

    def runs_of(cell):
        # What the page's click handler sends: the cell's x and y, and its panel's values.
        query = {"optimizer.lr": cell["x"], "batch_schedule.batch_size": cell["y"]}
        for part in cell["panel"].split(" · "):
            key, _, value = part.partition("=") if "=" in part else ("block", "", part[6:])
            query[key] = value
        return client.get("/api/studies/two/runs", params=query).json()

    cell = next(c for c in cells if c["state"] == "all diverged")
    runs = runs_of(cell)
    assert runs["total"] == 3 == cell["runs"]
    assert {r["status"] for r in runs["runs"]} == {"diverged"}
    assert {r["block"] for r in runs["runs"]} == {"large"}
    # The block that does not vary momentum has one panel, not named by it; its link still
    # finds exactly the cell's runs.
    small = next(c for c in cells if c["panel"].startswith("block small"))
    assert small["panel"] == "block small"
    runs = runs_of(small)
    assert runs["total"] == 3 and {r["block"] for r in runs["runs"]} == {"small"}


def test_the_analyses_are_the_report_s(client, cli):
    shown = client.get("/api/studies/two/analyses").json()
    assert [a["analysis"] for a in shown] == ["optimal", "scaling"]
    expected = json.loads(cli("analyze", "optimal", "--json").stdout)
    assert shown[0] == expected


def test_a_run_its_epochs_and_what_is_not_there(client):
    run_id = client.get("/api/studies/two/runs").json()["runs"][0]["run_id"]
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["run_id"] == run_id and run["status"] == "done"
    assert run["config"]["optimizer"]["name"] == "sgd"
    assert run["studies"][0]["study"] == "two"
    epochs = client.get(f"/api/runs/{run_id}/epochs").json()
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    missing = client.get("/api/runs/0000deadbeef")
    assert missing.status_code == 404
    assert missing.json()["error"].startswith("no run '0000deadbeef' in ")
    assert client.get("/api/runs/0000deadbeef/epochs").status_code == 404
    gone = client.get("/api/studies/nope")
    assert gone.status_code == 404 and "no study 'nope'" in gone.json()["error"]


def test_the_runs_table_sorts_filters_and_pages_on_the_server(client):
    def runs(**params):
        answer = client.get("/api/studies/two/runs", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    everything = runs(limit=1000)
    assert everything["total"] == len(everything["runs"]) == 36
    best = runs(sort="-best_test_acc", limit=1000)["runs"]
    values = [r["best_test_acc"] for r in best]
    assert values == sorted(values, reverse=True) and len(values) == 36
    by_lr = [r["run_id"] for r in runs(sort="optimizer.lr", limit=1000)["runs"]]
    assert by_lr == [r["run_id"] for r in runs(sort="optimizer_lr", limit=1000)["runs"]]
    diverged = runs(state="diverged")
    assert diverged["total"] == 6 and {r["status"] for r in diverged["runs"]} == {"diverged"}
    both = runs(state="diverged,done", block="large", min_best_test_acc="0.6", limit=1000)
    assert both["total"] == len(both["runs"]) > 0
    assert all(r["block"] == "large" and r["best_test_acc"] >= 0.6 for r in both["runs"])
    pages = [runs(sort="-seed", limit=10, offset=k) for k in (0, 10, 20, 30)]
    assert {p["total"] for p in pages} == {36}
    paged = [r["run_id"] for p in pages for r in p["runs"]]
    assert paged == [r["run_id"] for r in runs(sort="-seed", limit=1000)["runs"]]
    for params, said in [
        ({"sort": "nonsense"}, "sort: 'nonsense' is not a column of the runs table; use one of"),
        ({"state": "asleep"}, "state 'asleep': not a state; use one of pending, "),
        ({"limit": "-1"}, "limit '-1': give a whole number >= 0"),
        ({"min_best_test_acc": "high"}, "min_best_test_acc 'high': give a number"),
    ]:
        refused = client.get("/api/studies/two/runs", params=params)
        assert refused.status_code == 400, params
        assert refused.json()["error"].startswith(said), refused.json()


def test_compare_gives_runs_curves_and_only_the_settings_that_differ(client):
    rows = client.get("/api/studies/two/runs", params={"block": "large", "limit": 100}).json()
    picked = [r for r in rows["runs"] if r["seed"] == 0][:2]
    a, b = (r["run_id"] for r in picked)
    answer = client.get("/api/compare", params={"runs": f"{a},{b}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [r["run_id"] for r in body["runs"]] == [a, b]
    differs = set(body["runs"][0]["differs"])
    expected = {k for k in picked[0]["axes"] if picked[0]["axes"][k] != picked[1]["axes"][k]}
    assert differs == expected and differs
    assert "optimizer.name" in body["same"] and not differs & set(body["same"])
    for run in body["runs"]:
        assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3]
        assert {e["run_id"] for e in run["epochs"]} == {run["run_id"]}
    for runs, status, said in [
        ("", 400, "runs: give run ids"),
        ("zz", 400, "runs: 'zz' is not a run id (12 hex digits)"),
        ("0000deadbeef", 404, "no run '0000deadbeef' in "),
    ]:
        refused = client.get("/api/compare", params={"runs": runs})
        assert refused.status_code == status and refused.json()["error"].startswith(said)


def test_a_busy_server_sends_the_answer_it_kept_and_says_how_old(monkeypatch):
    """Past its freshness an answer is made again, unless making answers took more than
    the server's share of a core over the window: then the kept one goes, with its age."""
    from optlab.serve import answers

    clock = [100.0]
    monkeypatch.setattr(answers.time, "monotonic", lambda: clock[0])

    def make(text: str):
        def made() -> bytes:
            clock[0] += 1.0  # it takes a second: fresh for 5
            return text.encode()

        return made

    for share, second in [(0.01, (b"first", 11.0)), (0.1, (b"second", 0.0))]:
        kept = answers.Answers(share=share, window=20.0)
        assert kept.get("k", 1.0, make("first")) == (b"first", 0.0)
        clock[0] += 4.0
        assert kept.get("k", 1.0, make("second")) == (b"first", 4.0)  # still fresh
        clock[0] += 7.0  # stale; 1 s of the last 20 spent making: 0.05 of a core
        assert kept.get("k", 1.0, make("second")) == second
        clock[0] += 30.0  # that second is out of the window: made again
        assert kept.get("k", 1.0, make("third"))[0] == b"third"


def tuned_store(folder: Path) -> Path:
    """Two optimizers tuned by a search on validation, each confirmed by a final block:
    what a tuned study's bench shows (scatter, parallel, budget, compare, a profile)."""
    return make_store(
        folder,
        SPACES.replace("ADAMW_LR", "5e-4, 0.1"),
        lambda c, s: 0.5 + 2 * c["optimizer"]["lr"] + 0.01 * s,
        validation=lambda c, s: 0.45 + 2 * c["optimizer"]["lr"] + 0.01 * s,
    )


def test_the_bench_s_filters_budget_and_profile_answer_as_the_cli_does(tmp_path, cli):
    client = TestClient(create_app(tuned_store(tmp_path)), base_url=LOCAL)
    axes = client.get("/api/studies/spaces/axes").json()
    assert axes["blocks"] == ["adamw", "adamw/final", "sgdm", "sgdm/final"]
    lrs = next(a for a in axes["axes"] if a["axis"] == "optimizer.lr")["values"]
    assert lrs == sorted(lrs) and len(lrs) == 4 and all(isinstance(v, float) for v in lrs)

    def runs(*params):
        answer = client.get("/api/studies/spaces/runs", params=[*params, ("limit", "1000")])
        assert answer.status_code == 200, answer.text
        return answer.json()

    # A value of an axis (a range of one value, as the page asks), two values of it (what a
    # brush over a label axis asks), and a range.
    one = runs(("min_optimizer.lr", repr(lrs[1])), ("max_optimizer.lr", repr(lrs[1])))
    assert one["total"] == 4 and {r["axes"]["optimizer.lr"] for r in one["runs"]} == {lrs[1]}
    either = runs(("block", "adamw"), ("optimizer.lr", str(lrs[0])), ("optimizer.lr", str(lrs[2])))
    assert {r["axes"]["optimizer.lr"] for r in either["runs"]} == {lrs[0], lrs[2]}
    assert either["total"] == 4
    upper = runs(("min_optimizer.lr", str(lrs[2])))
    assert upper["total"] == 8 and all(r["axes"]["optimizer.lr"] >= lrs[2] for r in upper["runs"])

    charts = client.get("/api/studies/spaces/charts").json()
    assert charts["budget"]["spec"] and "expected" in json.dumps(charts["budget"]["spec"])
    # The page's choice of metric: the charts that value runs draw it, as --metric.
    final = client.get("/api/studies/spaces/charts", params={"metric": "final_test_acc"}).json()
    assert "final_val_acc" in json.dumps(final["scatter"]["spec"]["title"])
    assert "final_val_acc" in json.dumps(final["budget"]["spec"]["title"])
    assert "best_val_acc" in json.dumps(charts["scatter"]["spec"]["title"])
    bad = client.get("/api/studies/spaces/charts", params={"metric": "nope"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("--metric 'nope': not a")
    analyses = {a["analysis"]: a for a in client.get("/api/studies/spaces/analyses").json()}
    assert analyses["compare"]["tables"]["compare"]  # the final runs' table
    assert client.get("/api/studies/spaces/facts").json() == {"study": "spaces", "profile": True}

    refused = client.get("/api/studies/spaces/profile")
    assert refused.status_code == 400
    assert refused.json()["error"] == "target: give COLUMN=VALUE to reach, such as val_acc=0.9"
    answer = client.get("/api/studies/spaces/profile", params={"target": "val_acc=0.5"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    said = cli("analyze", "profile", "--target", "val_acc=0.5", "--json")
    assert said.exit_code == 0, said.stderr
    assert body["analysis"] == json.loads(said.stdout)  # as the CLI gives it
    assert body["chart"]["spec"] and "performance profiles" in json.dumps(body["chart"]["spec"])


def test_the_sql_box_reads_exactly_as_optlab_query_does(client, cli):
    statement = "select block, count(*) as n from runs group by block order by block"
    answer = client.get("/api/sql", params={"q": statement}).json()
    rows = json.loads(cli("query", statement, "--format", "json").stdout)
    assert answer["columns"] == ["block", "n"]
    assert [dict(zip(answer["columns"], r, strict=True)) for r in answer["rows"]] == rows
    copy = "copy runs to 'out.csv'"
    refused = client.get("/api/sql", params={"q": copy})
    assert refused.status_code == 400
    said = cli("query", copy).stderr.strip().removeprefix("Error: ")
    assert refused.json()["error"] == said
    assert not Path("out.csv").exists()


def test_an_unexpected_error_is_said_and_the_server_goes_on(client, monkeypatch):
    def broken(store, run_id):
        raise ValueError("a bug\nwith a second line")

    monkeypatch.setattr(data, "run", broken)
    answer = client.get("/api/runs/x")
    assert answer.status_code == 500
    assert answer.json() == {"error": "unexpected ValueError: a bug"}
    assert client.get("/api/studies").status_code == 200


def test_without_the_token_nothing_is_read(store, monkeypatch):
    asked = []
    real = data.studies
    monkeypatch.setattr(data, "studies", lambda s: asked.append(s) or real(s))
    client = TestClient(create_app(store, token="s3cret"), base_url=LOCAL)
    for url in ("/api/studies", "/", "/api/sql?q=select%201", "/?token=wrong"):
        refused = client.get(url)
        assert refused.status_code == 401, url
        assert "needs its token" in refused.text
    assert asked == []
    assert client.get("/api/studies", headers={"X-Optlab-Token": "s3cret"}).status_code == 200
    page = client.get("/?token=s3cret")  # the address optlab serve prints
    assert page.status_code == 200 and "optlab_token" in page.headers["set-cookie"]
    assert client.get("/api/studies").status_code == 200  # the page's polls carry the cookie
    assert len(asked) == 1  # the second answer is the first, kept for a second


def test_a_page_elsewhere_cannot_read_through_this_machine_s_server(store, monkeypatch):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends its
    own Host; an API request from another origin carries it in Origin (or a browser says
    cross-site). Each is refused before anything is read, and no CORS header is sent."""
    asked = []
    real = data.sql
    monkeypatch.setattr(data, "sql", lambda s, q: asked.append(q) or real(s, q))
    client = TestClient(create_app(store), base_url=LOCAL)
    for url, headers in [
        ("http://evil.example:8765/api/sql?q=select%201", {}),
        ("/api/sql?q=select%201", {"Origin": "http://evil.example:8765"}),
        ("/api/sql?q=select%201", {"Sec-Fetch-Site": "cross-site"}),
    ]:
        refused = client.get(url, headers=headers)
        assert refused.status_code == 403, (url, headers)
        assert refused.text.count("\n") == 0 and refused.text.startswith("403: ")
    assert asked == []
    for host in ("localhost:8765", "127.0.0.1", "[::1]:8765"):
        answer = client.get(
            "/api/sql?q=select%201", headers={"Host": host, "Origin": f"http://{host}"}
        )
        assert answer.status_code == 200, host
        assert not any(h.startswith("access-control") for h in answer.headers)


def test_a_token_with_any_characters_works_in_the_cookie(store):
    token = "a!b=c+d/e"
    client = TestClient(create_app(store, token=token), base_url=LOCAL)
    page = client.get("/", params={"token": token})
    assert page.status_code == 200
    assert client.get("/api/studies").status_code == 200  # through the cookie alone


def test_the_sql_box_counts_rows_it_does_not_send_and_stops_a_long_statement(client, monkeypatch):
    answer = client.get("/api/sql", params={"q": "select * from range(5000)"}).json()
    assert len(answer["rows"]) == data.SQL_ROWS == 1000 and answer["total"] == 5000
    monkeypatch.setattr(data, "SQL_SECONDS", 0.3)
    slow = "select count(*) from range(100000000) a, range(100000) b where a.range + b.range = -1"
    stopped = client.get("/api/sql", params={"q": slow})
    assert stopped.status_code == 400
    assert stopped.json()["error"] == (
        "SQL: stopped after 0.3 s, the limit here; narrow the statement, or run it with "
        "optlab query"
    )
    odd = client.get("/api/sql", params={"q": "update extensions"})
    assert odd.status_code == 400 and "refused: optlab query only reads" in odd.json()["error"]
    for part in ("runs", "charts", "analyses"):
        missing = client.get(f"/api/studies/nope/{part}")
        assert missing.status_code == 404, part


def test_an_empty_token_is_refused(cli):
    result = cli("serve", "--host", "0.0.0.0", "--token", "")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --token: empty (an unset variable?); give a token, or leave --token out and "
        "one is made and printed\n"
    )


def test_the_server_s_reads_leave_a_writer_gaps(store, monkeypatch):
    """optlab serve paces its reads: one at a time, each after a pause as long as the last
    held the store, so that a writer asking every 50 ms finds it free."""
    from optlab.store import opening

    pace = opening.Pace()
    pace.start()
    monkeypatch.setattr(opening, "PACE", pace)
    starts, ends = [], []
    for _ in range(3):
        with opening.reading(store):
            starts.append(time.monotonic())
            time.sleep(0.2)
        ends.append(time.monotonic())
    gaps = [b - a for a, b in zip(ends, starts[1:], strict=False)]
    assert min(gaps) >= 0.2, gaps
    with opening.reading(store), opening.reading(store):  # nested in one thread: no wait
        pass


def test_a_store_it_cannot_serve_is_one_line_exit_2(cli, tmp_path, store):
    import duckdb

    missing = cli("serve", "--store", str(tmp_path / "none.duckdb"))
    assert missing.exit_code == 2
    assert (
        missing.stderr
        == f"Error: {tmp_path / 'none.duckdb'}: no store here yet; run a study first (optlab run)\n"
    )
    foreign = tmp_path / "other.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("create table measurements (x integer)")
    con.close()
    refused = cli("serve", "--store", str(foreign))
    assert refused.exit_code == 2 and "not an optlab store" in refused.stderr
    assert refused.stderr.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = cli("serve", "--store", str(store), "--port", str(port))
    assert busy.exit_code == 2
    assert busy.stderr == f"Error: --port {port}: in use on 127.0.0.1; give another with --port\n"
    wrong = cli("serve", "--store", str(store), "--port", "70000")
    assert wrong.exit_code == 2
    assert wrong.stderr == "Error: --port 70000: give a port from 1 to 65535\n"


def test_a_newer_store_is_refused(cli, tmp_path):
    from optlab.store import core as st

    store = tmp_path / "optlab.duckdb"
    with st.writing(store) as con:
        st.ensure_schema(con)
        con.execute("update meta set value = '99' where key = 'schema_version'")
    result = cli("serve")
    assert result.exit_code == 2
    assert "made by a newer optlab (store schema 99; this optlab knows up to 3)" in result.stderr


# ---- in a real browser ------------------------------------------------------------------


class Served:
    """The app on a free port of this machine, in a thread, for a browser to open."""

    def __init__(self, store: Path, token: str | None = None):
        # Every answer made afresh when due, however busy the server has been: what the
        # page shows then depends on the store alone, not on this machine's speed.
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(store, token, share=1.0), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, args=([self.sock],), daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (tests/setup-browser)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(url)
    return page


def shot(page, name: str) -> None:
    OUTPUTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUTS / f"serve-{name}.png"), full_page=True)


# Many short runs: the page sees runs finish and epochs arrive soon after it opens (the
# test ends then), and the study is still running however slowly the page opens.
LIVE = f"""
name = "live"
seeds = [0]
[base]
epochs = 4
dataset = {{ name = "synthetic", classes = 4, shape = [1, 16, 16], train_size = 1024 }}
model = {{ name = "mlp", hidden = [256, 256] }}
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9 }}
batch_schedule = {{ name = "constant", batch_size = 32 }}
[[block]]
name = "grid"
grid = {{ "optimizer.lr" = {[round(0.01 + 0.004 * i, 3) for i in range(40)]} }}
"""


def watch(page, reads: dict, seconds: float = 180) -> dict:
    """What each of ``reads`` shows, read every half second, until each has changed (or
    time is up)."""
    seen = {name: [read()] for name, read in reads.items()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(len(set(v)) < 2 for v in seen.values()):
        page.wait_for_timeout(500)
        for name, read in reads.items():
            now = read()
            if now != seen[name][-1]:
                seen[name].append(now)
    return seen


@pytest.mark.slow  # a real study in worker processes, a browser
def test_the_page_follows_a_running_study_without_a_reload(browser, tmp_path):
    (tmp_path / "live.toml").write_text(LIVE)
    store = tmp_path / "optlab.duckdb"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("OPTLAB_STORE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "optlab", "run", "live.toml", "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not store.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with Served(store) as served:
            page = open_page(browser, served.url + "/")
            page.wait_for_selector("tr[data-study=live]")
            shot(page, "studies")
            page.goto(served.url + "/study/live")
            page.wait_for_selector("#curves[data-rows]", timeout=120_000)

            def done() -> int:
                shown = page.locator("#status .n-done")
                return int(shown.inner_text().split()[0]) if shown.count() else 0

            seen = watch(
                page,
                {"done": done, "rows": lambda: int(page.get_attribute("#curves", "data-rows"))},
            )
            shot(page, "study")
            for name, values in seen.items():  # grew while the page stayed open
                assert len(values) >= 2 and values == sorted(values), (name, values)
            assert page.locator("#curves svg.marks").count() == 1  # drawn, not only counted
            assert page.errors == [] and page.evaluate("window.optlabErrors") == []
    finally:
        proc.kill()
        proc.wait()


ROWS = "document.querySelectorAll('#runs-list tr[data-run]')"


def runs_table_scenario(browser, page, url: str) -> None:
    """Sort the runs table by a column, keep one state, tick two runs and compare them;
    the address holds it all, so the link opens the same view in another page."""
    page.goto(url + "/study/two")
    page.wait_for_selector("#runs-list tr[data-run]")
    for _ in range(2):  # ascending, then descending
        page.click("#runs-list th[data-sort=best_test_acc]")
    page.wait_for_url("**sort=-best_test_acc*")
    with urllib.request.urlopen(
        url + "/api/studies/two/runs?sort=-best_test_acc&limit=1"
    ) as answer:
        top = json.loads(answer.read())["runs"][0]["run_id"]
    page.wait_for_function(f"{ROWS}[0].dataset.run === '{top}'")
    # An axis is a column of its own, sorted by its values.
    page.click("#runs-list th[data-sort='optimizer.lr']")
    page.wait_for_url("**sort=optimizer.lr*")
    page.wait_for_function(  # drawn again: its header marked
        "document.querySelector(\"#runs-list th[data-sort='optimizer.lr']\").innerText"
        ".includes('▲')"
    )
    lrs = page.evaluate(
        f"[...{ROWS}].map((r) => r.querySelector('[data-col=\"optimizer.lr\"]').innerText)"
    )
    assert [float(v) for v in lrs] == sorted(float(v) for v in lrs) and len(set(lrs)) > 1
    page.click("#runs-list th[data-sort=best_test_acc]")
    page.click("#runs-list th[data-sort=best_test_acc]")
    page.wait_for_url("**sort=-best_test_acc*")
    page.check("[data-state=diverged]")
    page.wait_for_function(
        f"{ROWS}.length === 6 && [...{ROWS}].every((r) => "
        "r.querySelector('[data-col=status]').innerText === 'diverged')"
    )
    picks = page.locator("#runs-list [data-pick]")
    picks.nth(0).check()
    picks.nth(1).check()
    page.click("#compare-runs")
    page.wait_for_selector("#compare-curves svg")
    assert page.locator("#compare table tr").count() == 3  # a header and a row a run
    assert "seed" in page.inner_text("#compare table tr >> nth=0")  # one cell's seeds differ
    shared = browser.new_page(viewport={"width": 1200, "height": 900})
    shared.goto(page.url)
    shared.wait_for_selector("#compare-curves svg")
    shared.wait_for_function(f"{ROWS}.length === 6")
    assert shared.is_checked("[data-state=diverged]")
    assert "▼" in shared.inner_text("#runs-list th[data-sort=best_test_acc]")
    assert shared.locator("#runs-list [data-pick]:checked").count() == 2
    shot(shared, "runs-compare")
    shared.close()


@pytest.mark.slow  # a browser
def test_the_pages_in_chromium(browser, store):
    with Served(store) as served:
        page = open_page(browser, served.url + "/study/two")
        page.wait_for_selector("a.cell")
        diverged = page.locator("a.cell.s-diverged")
        assert diverged.count() == 6
        assert "diverged" in diverged.first.get_attribute("title")
        page.wait_for_selector("#heatmap svg")
        # Each chart shows its SQL (what `optlab plot` writes beside its image) and a menu
        # that saves it as PNG or SVG.
        assert "from per_run" in page.text_content("#heatmap-sql pre")
        assert page.locator("#heatmap .vega-actions a[download$='.svg']").count() == 1
        assert page.locator("#heatmap .vega-actions a[download$='.png']").count() == 1
        page.wait_for_selector("#analyses h3")
        shot(page, "study-two")
        # A heatmap cell (its label, over it, as a user clicks) lists that cell's runs.
        page.locator("#heatmap g.mark-text text").first.click()
        page.wait_for_url("**/study/two?*block=*")
        page.wait_for_function("document.querySelectorAll('#runs table tr').length === 4")
        assert page.inner_text("#runs h2").startswith("Runs where ")
        runs_table_scenario(browser, page, served.url)
        page.goto(served.url + "/study/two")
        page.wait_for_selector("a.cell.s-diverged")
        run_id = diverged.first.get_attribute("data-run")
        diverged.first.click()
        page.wait_for_url(f"**/run/{run_id}")
        page.wait_for_selector("#state")
        assert page.inner_text("#state") == "diverged"
        page.wait_for_selector("#acc svg")
        shot(page, "run")
        page.click("a.study-link")
        page.wait_for_url("**/study/two")
        page.goto(served.url + "/sql?q=" + "select block, count(*) as n from runs group by 1")
        page.wait_for_selector("#sql-count")
        assert page.inner_text("#sql-count") == "2 row(s)"
        shot(page, "sql")
        assert page.errors == [] and page.evaluate("window.optlabErrors") == []
        page.fill("#q", "copy runs to 'out.csv'")
        page.click("#run")
        page.wait_for_selector("#sql-error")
        assert "refused: optlab query only reads" in page.inner_text("#sql-error")
        assert "copy+runs" in page.url or "copy%20runs" in page.url  # kept in the address
        # The refusal is the API's 400, which the browser notes; nothing else went wrong.
        assert [e for e in page.errors if "status of 400" not in e] == []
        page.goto(served.url + "/run/0000deadbeef")
        page.wait_for_selector("#refused")
        assert "no run '0000deadbeef'" in page.inner_text("#refused")
        # A study removed while its page is open: the page says so, the server goes on.
        page.goto(served.url + "/study/two")
        page.wait_for_selector("a.cell")
        # Another process, as a user's would be (the store is held by this one's reads).
        optlab(
            "rm",
            "--study",
            "two",
            "--yes",
            "--store",
            str(store),
            cwd=store.parent,
            check=True,
            fresh=True,  # the page this test serves holds the store open in this process
        )
        page.wait_for_selector("#refused", timeout=10_000)
        assert "no study 'two'" in page.inner_text("#refused")
        page.goto(served.url + "/")
        page.wait_for_selector("#studies p")
        assert "no studies in this store yet" in page.inner_text("#studies")
    # The server gone: the page says so and keeps trying.
    page.wait_for_function("document.getElementById('conn').textContent.includes('lost')")
    assert page.inner_text("#conn") == "connection lost: retrying"
    with Served(store, token="s3cret") as served:
        page = open_page(browser, served.url + "/")
        assert "needs its token" in page.inner_text("body")
        page = open_page(browser, served.url + "/?token=s3cret")
        page.wait_for_selector("#studies p")


def drag_over_the_first_axis(page, high: float, low: float) -> dict:
    """Drag a brush over the parallel coordinates' first axis, from ``high`` down to ``low``
    (places on it, 0 to 1), as a user's mouse does; the brush the chart then holds."""
    page.locator("#parallel").scroll_into_view_if_needed()
    at = page.evaluate(
        """([high, low]) => {
          const v = window.optlabViews.parallel, pad = v.padding();
          const box = document.querySelector("#parallel svg.marks").getBoundingClientRect();
          const [ox, oy] = v.origin();
          const left = box.left + ox + pad.left, top = box.top + oy + pad.top;
          return {x: left + v.scale("x")(0), from: top + v.scale("y")(high),
                  to: top + v.scale("y")(low)};
        }""",
        [high, low],
    )
    page.mouse.move(at["x"] - 12, at["from"])
    page.mouse.down()
    page.mouse.move(at["x"] + 12, at["to"], steps=6)
    page.mouse.up()
    page.wait_for_url("**min_optimizer.lr=*")
    return page.evaluate("window.optlabViews.parallel.signal('brush')")


@pytest.mark.slow  # a browser
def test_a_tuned_study_s_bench_in_chromium(browser, tmp_path):
    """Brush the parallel coordinates and the runs table keeps the runs brushed; filter by
    block and by a metric; type a profile's target; the link reopens all of it."""
    from optlab.charts.searches import _position

    store = tuned_store(tmp_path)
    with Served(store) as served:
        page = open_page(browser, served.url + "/study/spaces")
        page.wait_for_selector("#parallel svg.marks")
        page.wait_for_selector("#budget svg.marks")
        page.wait_for_function("document.querySelector('#analyses').innerText.includes('compare')")
        brush = drag_over_the_first_axis(page, high=0.97, low=0.3)
        # The configurations whose lines cross the lr axis inside the brush, reckoned here.
        with st.reading(store) as con:
            lrs = [
                lr
                for (lr,) in con.execute(
                    "select distinct optimizer_lr from runs where block in ('adamw', 'sgdm')"
                ).fetchall()
            ]
        places = _position(lrs)
        low, high = sorted(brush["place"])
        inside = sorted(v for v, p in places.items() if low <= p <= high)
        assert inside and len(inside) < len(lrs)
        with st.reading(store) as con:
            (expected,) = con.execute(
                "select count(*) from runs where optimizer_lr between ? and ?",
                [inside[0], inside[-1]],
            ).fetchone()
        page.wait_for_function(
            f"(document.getElementById('runs-count') || {{}}).innerText === "
            f"'1-{expected} of {expected} runs previous next'"
        )
        assert "optimizer.lr ≥" in page.inner_text("#runs-chips")
        shown = page.evaluate(f"[...{ROWS}].map((r) => r.dataset.run)")
        with st.reading(store) as con:  # a final block's runs too, where their lr is inside
            kept = con.execute(
                "select optimizer_lr from runs where run_id in (select unnest(?))", [shown]
            ).fetchall()
        assert len(kept) == expected and all(inside[0] <= lr <= inside[-1] for (lr,) in kept)
        # A block and a metric floor, through the filter controls.
        page.select_option("#filter-block", "sgdm")
        page.select_option("#filter-column", "best_test_acc")
        page.fill("#filter-min", "0.5")
        page.click("#filter-add")
        page.wait_for_url("**min_best_test_acc=0.5*")
        page.wait_for_function(
            f"[...{ROWS}].every((r) => r.querySelector('[data-col=block]').innerText === "
            f"'sgdm') && {ROWS}.length > 0"
        )
        # A profile to a target typed in, as `optlab analyze profile --target` answers.
        page.fill("#profile-target", "val_acc=0.5")
        page.click("#profile-go")
        page.wait_for_selector("#profile svg.marks")
        assert "steps to reach val_acc >= 0.5" in page.inner_text("#profile-answer")
        assert page.errors == [] and page.evaluate("window.optlabErrors") == []
        # The link: the same filters, table and profile in another page.
        shared = open_page(browser, page.url)
        shared.wait_for_selector("#profile svg.marks")
        shared.wait_for_function(f"{ROWS}.length > 0")
        assert shared.inner_text("#runs-chips") == page.inner_text("#runs-chips")
        assert shared.inner_text("#runs-count") == page.inner_text("#runs-count")
        assert shared.input_value("#filter-block") == "sgdm"
        shot(shared, "bench-tuned")
        # A filter removed: its chip's cross.
        shared.locator("#runs-chips .chip", has_text="best_test_acc").locator(".drop").click()
        shared.wait_for_function("!location.search.includes('min_best_test_acc')")
        assert shared.errors == []
        # The charts' metric: they are drawn again for it, and the address keeps it.
        page.select_option("#chart-metric", "final_test_acc")
        page.wait_for_url("**metric=final_test_acc*")
        page.wait_for_function(
            "document.querySelector('#scatter').innerText.includes('final_val_acc')"
        )
        # Every filter removed (a chip's cross), then a scatter's point (a configuration):
        # the table keeps its runs, its two seeds.
        page.select_option("#filter-block", "")
        while page.locator("#runs-chips .chip").count():
            left = page.locator("#runs-chips .chip").count() - 1
            page.locator("#runs-chips .chip .drop").first.click()
            page.wait_for_function(
                f"document.querySelectorAll('#runs-chips .chip').length === {left}"
            )
        page.locator("#scatter path[aria-roledescription=point]").last.click()  # the one on top
        page.wait_for_function(f"{ROWS}.length === 2")
        point = page.evaluate(
            f"[...{ROWS}].map((r) => r.querySelector('[data-col=block]').innerText)"
        )
        assert point[0] == point[1] and f"block={point[0]}" in page.url.replace("%2F", "/")
        assert page.locator("#runs-chips .chip").count() == 2  # its lr and its weight decay
        assert page.errors == [] and page.evaluate("window.optlabErrors") == []


def readme_picture(folder: Path) -> Path | None:
    """The README's picture, on the quickstart study the README's tour ran in ``folder``
    (a real, finished study): the shared address of its runs sorted by best test accuracy,
    with the top two compared. The page names the store as `optlab serve` was given it
    there (no temporary path), and its status agrees with its table. None without a
    browser."""
    if CHROMIUM is None:
        return None
    from playwright.sync_api import sync_playwright

    here = Path.cwd()
    os.chdir(folder)  # served as `optlab serve` in that folder names it: optlab.duckdb
    try:
        with Served(Path("optlab.duckdb")) as served, sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = open_page(chromium, served.url + "/study/quickstart?sort=-best_test_acc&limit=8")
            page.wait_for_selector("#runs-list tr[data-run]")
            picks = page.locator("#runs-list [data-pick]")
            picks.nth(0).check()
            picks.nth(1).check()
            page.click("#compare-runs")
            page.wait_for_selector("#compare-curves svg.marks")
            assert page.inner_text("nav .store") == "optlab.duckdb"
            status = page.inner_text("#status")
            total = int(page.inner_text("#runs-count").split(" of ")[1].split()[0])
            assert status.startswith(f"{total} runs: ") and total == 56, status
            counted = sum(int(n) for n in re.findall(r"(\d+) (?:done|diverged)", status))
            assert counted == total, status
            assert page.errors == [] and page.evaluate("window.optlabErrors") == []
            OUTPUTS.mkdir(parents=True, exist_ok=True)
            picture = OUTPUTS / "serve-readme.png"
            page.locator("section#runs").screenshot(path=str(picture))
            chromium.close()
    finally:
        os.chdir(here)
    return picture


@pytest.mark.slow  # a real server process
def test_serve_prints_its_address_and_ctrl_c_stops_it(store):
    import signal
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("OPTLAB_STORE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "optlab", "serve", "--port", str(port)],
        cwd=store.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert (
            line
            == f"optlab serve: http://127.0.0.1:{port}/ (store optlab.duckdb); Ctrl-C stops it\n"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as r:
            assert [s["name"] for s in json.load(r)] == ["two"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0  # how it is meant to stop: not an error
        assert proc.stdout.read() == "optlab serve: stopped\n"
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr.read() == ""


@pytest.mark.slow  # a browser
def test_runs_halving_stopped_show_as_stopped_and_say_why(browser, store):
    with st.writing(store) as con:
        ids = [
            r for (r,) in con.execute("select run_id from runs order by run_id limit 2").fetchall()
        ]
        reason = "stopped at epoch 3 (asha): val_acc 0.5 ranks 3 of 3, the best 1 go on"
        st.apply_events(
            con,
            [
                {"type": "rung", "run_id": r, "epoch": 3, "decision": "stop", "reason": reason}
                for r in ids
            ],
        )
    with Served(store) as served:
        page = open_page(browser, served.url + "/study/two")
        page.wait_for_selector("a.cell.s-stopped")
        assert page.locator("a.cell.s-stopped").count() == 2
        page.goto(served.url + f"/run/{ids[0]}")
        page.wait_for_selector("#state")
        assert page.inner_text("#state") == "stopped"
        page.wait_for_function("document.body.innerText.includes('why stopped')")
        assert reason in page.inner_text("body")
        assert page.errors == []
