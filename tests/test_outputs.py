"""Charts, the HTML report (rendered in headless Chromium) and exports, on made-up stores."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import duckdb
import pytest

from tests.synth import make_store

STUDY = """
name = "grid"
seeds = [0, 1]
[base]
epochs = 3
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
[[block]]
name = "main"
grid = { "optimizer.lr" = [0.01, 0.1, 1.0], "batch_schedule.batch_size" = [32, 128] }
"""


def acc(config, seed):
    lr, bs = config["optimizer"]["lr"], config["batch_schedule"]["batch_size"]
    return 0.9 - abs(lr - 0.1 * bs / 128) - 0.01 * seed


def norms(config, seed):
    return [1.0, 0.5, 0.2] if config["batch_schedule"]["batch_size"] == 128 else [1.0, 0.8, 0.6]


@pytest.fixture
def store(tmp_path):
    def status(config, seed):
        return "diverged" if config["optimizer"]["lr"] == 1.0 and seed == 1 else "done"

    return make_store(tmp_path, STUDY, acc, status=status, grad_norm=norms)


@pytest.mark.parametrize(
    "args",
    [
        ["heatmap"],
        ["curves"],
        ["curves", "--x", "seconds", "--metric", "train_loss"],
        ["sensitivity"],
        ["scaling"],
        ["sfo", "--epsilon", "0.5"],
        ["probes", "--probe", "full_grad_norm"],
        ["gradnorm", "--epsilon", "0.5"],
    ],
)
def test_each_chart_writes_its_image_and_the_sql_that_reproduces_its_data(
    cli, store, args, tmp_path
):
    result = cli("plot", *args, "--out", "chart.svg")
    assert result.exit_code == 0, result.stderr
    svg = (tmp_path / "chart.svg").read_text()
    assert svg.startswith("<svg") and "<path" in svg
    sql = (tmp_path / "chart.svg.sql").read_text()
    rows = json.loads(cli("query", sql, "--format", "json").stdout)
    assert f" of {len(rows)} " in result.stdout and rows


def test_sensitivity_and_scaling_show_what_the_data_say(cli, store, tmp_path):
    cli("plot", "scaling", "--out", "s.html")
    rows = json.loads(
        cli("query", (tmp_path / "s.html.sql").read_text(), "--format", "json").stdout
    )
    assert {r["batch_size"]: r["optimal_lr"] for r in rows} == {32: 0.01, 128: 0.1}
    html = (tmp_path / "s.html").read_text()
    assert "slope 1.66" in html  # log(0.1/0.01) / log(128/32)
    assert 'src="http' not in html  # self-contained: Vega is inlined


RULE_STUDY = """
name = "rules"
seeds = [0, 1]
[base]
epochs = 3
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
[[block]]
name = "landscape"
grid = { "optimizer.lr" = [0.01, 0.1], "batch_schedule.batch_size" = [32, 128] }
[[block]]
name = "linear_rule"
set = { lr_scaling = "linear", lr_reference_batch = 128 }
grid = { "batch_schedule.batch_size" = [32, 128, 512] }
"""


def test_scaling_draws_a_rule_block_as_the_metric_per_batch_size_not_as_an_optimum(cli, tmp_path):
    """Seed 001's experiment 3 beside a searched landscape: the rule block tried one LR per
    batch size, so it gets no "optimal LR" and no slope (which would be 1 by construction);
    it is drawn as the metric per batch size with the reference batch's mean."""

    def rule_acc(config, seed):
        if config.get("lr_scaling") == "linear":
            return {32: 0.8, 128: 0.82, 512: 0.7}[
                config["batch_schedule"]["batch_size"]
            ] + 0.01 * seed
        return acc(config, seed)

    make_store(tmp_path, RULE_STUDY, rule_acc)
    result = cli("plot", "scaling", "--out", "s.html")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(
        cli("query", (tmp_path / "s.html.sql").read_text(), "--format", "json").stdout
    )
    optimal = {
        (r["panel"], r["batch_size"]): r["optimal_lr"] for r in rows if r["part"] == "optimal LR"
    }
    assert optimal == {("block landscape", 32): 0.01, ("block landscape", 128): 0.1}
    # Each cell is the mean over its 2 seeds, each seed's own best epoch (not one best
    # over the pooled epochs of both).
    assert {r["seeds"] for r in rows if r["part"] == "optimal LR"} == {2}
    per_batch = {r["batch_size"]: r for r in rows if r["part"] == "metric per batch size"}
    assert {r["panel"] for r in per_batch.values()} == {"block linear_rule"}
    assert {b: round(r["mean"], 6) for b, r in per_batch.items()} == {
        32: 0.805,
        128: 0.825,
        512: 0.705,
    }
    assert per_batch[512]["low"] == pytest.approx(0.7) and per_batch[512]["high"] == pytest.approx(
        0.71
    )
    html = (tmp_path / "s.html").read_text()
    assert "per batch size, the LR set by the scaling rule" in html
    assert "the mean at the reference batch (128)" in html
    # One fitted line, the landscape's (its slope: log 10 / log 4); none for the rule block.
    assert html.count("slope 1.66") == 1 and "slope 1.00" not in html
    # A study of the rule block alone varies no LR: it is drawn, not refused.
    (tmp_path / "optlab.duckdb").unlink()
    rule_only = RULE_STUDY.split("[[block]]")[0] + "[[block]]" + RULE_STUDY.split("[[block]]")[2]
    make_store(tmp_path, rule_only.replace('"rules"', '"rule_only"'), rule_acc)
    result = cli("plot", "scaling", "--out", "r.html")
    assert result.exit_code == 0, result.stderr
    html = (tmp_path / "r.html").read_text()
    assert "optimal LR against batch size" not in html and "the LR set by the scaling rule" in html


def test_gradnorm_marks_where_each_schedule_first_reaches_epsilon(store):
    from optlab.analysis.results import study_axes
    from optlab.charts.gradients import gradnorm_figure
    from optlab.store import views
    from optlab.store.core import reading

    with reading(store) as con:
        views.ensure_readable(con)
        study, axes = study_axes(con, None)
        figure = gradnorm_figure(con, study, axes, 0.5)
    spec = figure.chart.to_dict()
    crossings = {
        d["color"]: d
        for layer in spec["layer"]
        if "data" in layer
        for d in layer["data"]["values"]
        if "label" in d
    }
    # Batch 128 reaches 0.5 at epoch 2 (SFO 2000) in every finished run; batch 32 never
    # does (0.6 at the end), so it gets no diamond.
    assert {c: (d["x"], d["label"]) for c, d in crossings.items()} == {
        "main: optimizer.lr=0.01, batch_schedule.batch_size=128": (2000, "2/2 reached"),
        "main: optimizer.lr=0.1, batch_schedule.batch_size=128": (2000, "2/2 reached"),
        "main: optimizer.lr=1.0, batch_schedule.batch_size=128": (2000, "1/1 reached"),
    }
    assert "dashed: epsilon = 0.5" in json.dumps(spec["title"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["curves", "--color", "optimizer.momentum"],
            "--color optimizer.momentum: the study does "
            "not vary it; it varies optimizer.lr, batch_schedule.batch_size",
        ),
        (
            ["curves", "--metric", "accuracy"],
            "--metric 'accuracy': not an epochs column; use one "
            "of step, samples, sfo, epoch_lr, epoch_batch_size, train_loss, train_acc, test_loss, "
            "test_acc, seconds, eval_seconds, val_loss, val_acc, probe_seconds, "
            "sfo_full_batches, comm_rounds",
        ),
        (
            ["heatmap", "--x", "optimizer.lr", "--y", "lr_schedule.warmup_epochs"],
            "--y lr_schedule.warmup_epochs: the study does not vary it; it varies optimizer.lr, "
            "batch_schedule.batch_size",
        ),
        (
            ["sensitivity", "--metric", "final_accuracy"],
            "--metric 'final_accuracy': not a metric; "
            "use REDUCER_COLUMN with REDUCER one of best, final, min, max, mean and COLUMN "
            "one of step, "
            "samples, sfo, epoch_lr, epoch_batch_size, train_loss, train_acc, test_loss, test_acc, "
            "seconds, eval_seconds, val_loss, val_acc, probe_seconds, sfo_full_batches, "
            "comm_rounds (e.g. best_test_acc, best_test_loss, best_train_loss)",
        ),
        (
            ["probes", "--probe", "hessian_trace"],
            "probe 'hessian_trace': study 'grid' has no values of it; it has full_grad_norm",
        ),
        (
            ["probes", "--key", "layer9"],
            "--key 'layer9': probe full_grad_norm has no such key; it has global",
        ),
        (["curves", "--out", "c.pdf"], "--out c.pdf: use a file ending in .html, .png, .svg"),
        (["gradnorm", "--x", "time"], "--x 'time': use sfo, sfo_full_batches, step or epoch"),
        (
            ["gradnorm", "--epsilon", "-1"],
            "--epsilon: the full gradient norm to reach, a positive number",
        ),
        (
            ["curves", "--color", "cells"],
            "--color cells: the study does not vary it; it varies "
            "optimizer.lr, batch_schedule.batch_size",
        ),
    ],
)
def test_chart_errors_are_one_line(cli, store, args, message):
    result = cli("plot", *args)
    assert (result.exit_code, result.stderr) == (1, f"Error: {message}\n")


def test_scaling_chart_needs_batch_sizes(cli, tmp_path):
    make_store(
        tmp_path, STUDY.replace(', "batch_schedule.batch_size" = [32, 128]', ""), lambda c, s: 0.5
    )
    result = cli("plot", "scaling")
    assert result.stderr == (
        "Error: scaling: needs the study to vary optimizer.lr and "
        "batch_schedule.batch_size; study 'grid' varies optimizer.lr\n"
    )


# ---- report -----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")


def test_report_is_one_self_contained_file_with_the_matrix_status_and_analyses(
    cli, store, tmp_path
):
    result = cli("report", "--out", "r.html")
    assert result.exit_code == 0, result.stderr
    # Charts: heatmap, curves, sensitivity, scaling, sfo, the probe. Analyses: optimal,
    # scaling, sfo (no WD or warmup axis, one optimizer).
    assert "(6 charts, 3 analyses)" in result.stdout
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Matrix</h2>" in page and "<h2>Status</h2>" in page
    assert "<td>optimizer.lr = 0.01, 0.1, 1; batch_schedule.batch_size = 32, 128</td>" in page
    for analysis in ("optimal", "scaling", "sfo"):
        assert f"<h3>{analysis}" in page
    assert "<h3>lr-wd" not in page and "<h3>ranking" not in page
    assert "left out: 2 run(s), diverged" in page
    assert 'src="http' not in page and "<link" not in page


@pytest.mark.slow  # a headless browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (tests/setup-browser)")
def test_report_renders_every_chart_in_headless_chromium_without_console_errors(
    cli, store, tmp_path
):
    cli("report", "--out", "r.html")
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=20000",
            "--dump-dom",
            (tmp_path / "r.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = proc.stdout
    assert 'data-done="yes"' in dom, proc.stderr[-2000:]
    charts = dom.count('id="chart')
    assert charts == 6 and dom.count('data-rendered="yes"') == charts
    assert dom.count("<svg") >= charts
    assert '<pre id="optlab-errors" hidden=""></pre>' in dom
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert console == []


@pytest.mark.slow  # a headless browser
def test_report_of_a_broken_chart_is_caught_by_the_page(cli, store, tmp_path):
    """The page's own error capture works: a broken spec is reported, not silently empty."""
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (tests/setup-browser)")
    cli("report", "--out", "r.html")
    head, _, specs = (tmp_path / "r.html").read_text().partition("const specs = ")
    page = head + "const specs = " + specs.replace('"mark":', '"mark": {"type": "nope"}, "_x":', 1)
    (tmp_path / "bad.html").write_text(page)
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'p2'}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            (tmp_path / "bad.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert '<pre id="optlab-errors" hidden=""></pre>' not in proc.stdout


# ---- export -----------------------------------------------------------------------------


def test_export_csv_and_parquet_hold_the_studys_runs_epochs_and_probes(cli, store, tmp_path):
    for fmt in ("csv", "parquet"):
        result = cli("export", "grid", "--to", f"out_{fmt}", "--format", fmt)
        assert result.exit_code == 0, result.stderr
        con = duckdb.connect()
        folder = tmp_path / f"out_{fmt}"
        assert con.execute(f"select count(*) from '{folder}/runs.{fmt}'").fetchone()[0] == 12
        assert con.execute(f"select count(*) from '{folder}/epochs.{fmt}'").fetchone()[0] == 36
        assert (
            con.execute(f"select count(distinct run_id) from '{folder}/probes.{fmt}'").fetchone()[0]
            == 12
        )


def test_export_defaults_to_a_folder_named_after_the_study(cli, store, tmp_path):
    result = cli("export")
    assert result.stdout == "grid: 3 files written in grid_export (csv)\n"
    assert sorted(p.name for p in (tmp_path / "grid_export").iterdir()) == [
        "epochs.csv",
        "probes.csv",
        "runs.csv",
    ]


def test_export_seed001_layout(cli, store, tmp_path):
    assert cli("export", "--to", "s1", "--format", "seed001").exit_code == 0
    with (tmp_path / "s1" / "results" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    assert {(r["lr"], r["batch_size"]) for r in rows} == {
        (lr, bs) for lr in ("0.01", "0.1", "1.0") for bs in ("32", "128")
    }
    best = next(
        r for r in rows if r["lr"] == "0.1" and r["batch_size"] == "128" and r["seed"] == "0"
    )
    assert float(best["final_test_acc"]) == pytest.approx(0.9)
    history = json.loads((tmp_path / "s1" / "history" / f"main_{best['run_id']}.json").read_text())
    assert history["test_acc"] == pytest.approx([0.3, 0.6, 0.9])
    assert history["epoch"] == [1, 2, 3] and history["lr"] == [0.1, 0.1, 0.1]


def test_export_seed004_layout(cli, store, tmp_path):
    assert cli("export", "--to", "s4", "--format", "seed004").exit_code == 0
    run = tmp_path / "s4" / "main" / "optimizer.lr=0.1_batch_schedule.batch_size=128" / "run2"
    assert sorted(p.name for p in run.iterdir()) == [
        "lr_bs.csv",
        "norm.csv",
        "test.csv",
        "train.csv",
    ]
    with (run / "norm.csv").open() as f:
        assert list(csv.reader(f)) == [
            ["Epoch", "Steps", "Full Gradient Norm"],
            ["1", "10", "1.0"],
            ["2", "20", "0.5"],
            ["3", "30", "0.2"],
        ]
    with (run / "lr_bs.csv").open() as f:
        lr_bs = list(csv.reader(f))
    assert lr_bs[1] == ["1", "1", "0.1", "128"] and len(lr_bs) == 1 + 30  # a row per step
    with (run / "train.csv").open() as f:  # accuracy in percent: 0.9 - 0.01 at epoch 3
        assert list(csv.reader(f))[3][3] == "89.0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "blocker/sub"], "export: cannot write to blocker/sub: Not a directory"),
        (
            ["--format", "xlsx"],
            "--format 'xlsx': use one of csv, parquet, seed001, seed004 or bundle",
        ),
        (["nosuch"], "--study 'nosuch': no such study; studies: grid"),
    ],
)
def test_export_errors_are_one_line(cli, store, tmp_path, args, message):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    result = cli("export", *args)
    assert result.exit_code in (1, 2)
    assert result.stderr == f"Error: {message}\n"
