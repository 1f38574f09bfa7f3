"""The charts of a search: scatter (each searched dimension against the metric, validation
and test side by side) and parallel (a line per configuration), on a made-up store."""

from __future__ import annotations

import json

import pytest

from tests.synth import make_store

SEARCH = """
name = "tuned"
seeds = [0, 1]
[base]
epochs = 3
dataset = { name = "synthetic", val_fraction = 0.2 }
model = { name = "mlp" }
optimizer = { name = "adamw", lr = 0.001 }
[[block]]
name = "adamw"
[block.search]
n = 8
"optimizer.lr" = { log_uniform = [1e-4, 0.1] }
"optimizer.weight_decay" = { log_uniform = [1e-6, 5e-4], zero = 0.25 }
[[block]]
name = "sgdm"
set = { optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 } }
[block.search]
n = 8
"optimizer.lr" = { log_uniform = [1e-4, 0.1] }
"optimizer.weight_decay" = { log_uniform = [1e-6, 5e-4], zero = 0.25 }
"optimizer.momentum" = { choice = [0.8, 0.9, 0.99] }
"""


def accuracy(config, seed):
    return 0.5 + config["optimizer"]["lr"] + 0.01 * seed


def val_acc(config, seed):
    return 0.4 + config["optimizer"]["lr"] + 0.01 * seed


def status(config, seed):
    o = config["optimizer"]
    if o["name"] == "sgd" and o["lr"] > 0.03:
        return "diverged" if seed == 1 else "done"
    if o["lr"] < 3e-4:
        return "stopped"
    return "done"


@pytest.fixture
def tuned(tmp_path):
    return make_store(tmp_path, SEARCH, accuracy, status=status, validation=val_acc)


def spec_of(store, chart, **options):
    from optlab.analysis.results import study_axes
    from optlab.charts.catalog import chart as row
    from optlab.charts.figures import Selection
    from optlab.store import views
    from optlab.store.core import reading

    with reading(store) as con:
        views.ensure_readable(con)
        study, axes = study_axes(con, None)
        figure = row(chart).draw(con, study, axes, Selection(**options), {})
    return figure, figure.chart.to_dict()


def test_scatter_draws_each_searched_dimension_with_validation_beside_test(cli, tuned, tmp_path):
    result = cli("plot", "scatter", "--out", "s.html")
    assert result.exit_code == 0, result.stderr
    assert "scatter chart of 16 rows in 2 panels (by block)" in result.stdout
    rows = json.loads(
        cli("query", (tmp_path / "s.html.sql").read_text(), "--format", "json").stdout
    )
    # One row per configuration: its mean over both seeds, validation (m0) and test (m1).
    assert len(rows) == 16 and {r["runs"] for r in rows} == {2}
    for r in rows:
        if not r["diverged"]:
            assert r["m0"] == pytest.approx(0.4 + r["d0"] + 0.005)
            assert r["m1"] == pytest.approx(0.5 + r["d0"] + 0.005)
    # A diverged run counts with what it reached before diverging (epoch 2 of 3): here
    # seed 1's, beside seed 0's finished run.
    split = [r for r in rows if r["diverged"]]
    assert split and all(r["done"] == 1 and r["runs"] == 2 for r in split)
    for r in split:
        reached = (0.5 + r["d0"] + 0.01) * 2 / 3
        assert r["m1"] == pytest.approx((0.5 + r["d0"] + reached) / 2)
    figure, spec = spec_of(tuned, "scatter")
    # Three dimensions (lr, weight decay, momentum: AdamW has none), each a row of two.
    assert len(spec["vconcat"]) == 3 and all(len(c["hconcat"]) == 2 for c in spec["vconcat"])
    titles = [[p["encoding"]["y"]["title"] for p in c["hconcat"]] for c in spec["vconcat"]]
    assert titles == [["best_val_acc", "best_test_acc"]] * 3
    x = [c["hconcat"][0]["encoding"]["x"] for c in spec["vconcat"]]
    assert [e["title"] for e in x] == [
        "optimizer.lr",
        "optimizer.weight_decay",
        "optimizer.momentum",
    ]
    assert x[0]["scale"]["type"] == "log" and x[1]["scale"]["type"] == "symlog"
    ends = {d["end"] for d in spec["vconcat"][0]["hconcat"][0]["data"]["values"]}
    assert {"diverged", "stopped early", "finished"} <= ends
    assert "what a selection reads" in json.dumps(spec["title"])


def test_parallel_draws_a_line_per_configuration_coloured_by_validation(tuned):
    figure, spec = spec_of(tuned, "parallel", blocks=("adamw",))
    assert figure.rows == 8
    layers = spec["layer"]
    lines = next(layer for layer in layers if layer["mark"]["type"] == "line")
    assert lines["encoding"]["color"]["title"] == "best_val_acc"
    points = {d["point"] for d in lines["data"]["values"]}
    dims = {d["dimension"] for d in lines["data"]["values"]}
    assert len(points) == 8 and dims == {"optimizer.lr", "optimizer.weight_decay"}
    places = [d["place"] for d in lines["data"]["values"]]
    assert min(places) == 0.0 and max(places) == 1.0


def test_a_search_study_s_report_draws_scatter_and_parallel_not_a_sparse_heatmap(
    cli, tuned, tmp_path
):
    result = cli("report")
    assert result.exit_code == 0, result.stderr
    (html,) = tmp_path.glob("*_report.html")
    text = html.read_text()
    assert "<h3>scatter" in text and "<h3>parallel" in text
    assert "<h3>heatmap" not in text


def test_the_page_draws_a_search_with_scatter_and_parallel_not_a_sparse_heatmap(tuned):
    from starlette.testclient import TestClient

    from optlab.serve.app import create_app

    client = TestClient(create_app(tuned), base_url="http://127.0.0.1:8765")
    charts = client.get("/api/studies/tuned/charts").json()
    assert list(charts) == ["heatmap", "scatter", "parallel", "curves", "budget"]
    assert charts["heatmap"] == {
        "note": "no heatmap: a search's points are drawn by scatter and parallel"
    }
    for kind in ("scatter", "parallel"):
        assert charts[kind]["rows"] == 16 and charts[kind]["spec"]
