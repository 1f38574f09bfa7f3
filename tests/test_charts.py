"""What a chart draws: panels instead of silent pooling, cells with no mean coloured by why,
and seed bands that are confidence intervals."""

from __future__ import annotations

import json
import math
import re

import pytest
from scipy import stats

from optlab.store import core as st
from tests.synth import make_store

# Two blocks on different LR grids; the second also varies momentum.
STUDY = """
name = "two"
seeds = [0, 1, 2]
[base]
epochs = 3
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1, momentum = 0.9 }
[[block]]
name = "small"
grid = { "optimizer.lr" = [0.01, 0.1], "batch_schedule.batch_size" = [32, 64] }
[[block]]
name = "large"
[block.grid]
"optimizer.lr" = [0.01, 0.1]
"batch_schedule.batch_size" = [128, 256]
"optimizer.momentum" = [0.0, 0.9]
"""


def acc(config, seed):
    o, b = config["optimizer"], config["batch_schedule"]["batch_size"]
    return 0.5 + o["lr"] + 0.1 * o["momentum"] + b / 1000 + 0.01 * seed


@pytest.fixture
def store(tmp_path):
    def status(config, seed):
        o = config["optimizer"]
        if o["lr"] == 0.1 and o["momentum"] == 0.0:
            return "diverged"  # every seed: a cell with no mean
        return "done"

    return make_store(tmp_path, STUDY, acc, status=status)


def sql_rows(cli, path):
    return json.loads(cli("query", path.read_text(), "--format", "json").stdout)


def test_heatmap_draws_a_panel_per_block_and_per_other_axis_by_default(cli, store, tmp_path):
    result = cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--out",
        "h.html",
    )
    assert result.exit_code == 0, result.stderr
    assert "in 3 panels (by block, optimizer.momentum)" in result.stdout
    assert "POOLED" not in result.stdout
    rows = sql_rows(cli, tmp_path / "h.html.sql")
    # Each cell is one block's runs of one momentum: the mean of its three seeds, exactly.
    cell = {(r["panel"], r["x"], r["y"]): r for r in rows}
    # Block small holds momentum at 0.9: its one panel is not named (nor split) by it.
    assert {r["panel"] for r in rows} == {
        "block small",
        "block large · optimizer.momentum=0.0",
        "block large · optimizer.momentum=0.9",
    }
    small = cell[("block small", 0.01, 32)]
    assert small["runs"] == 3 and small["value"] == pytest.approx(
        acc({"optimizer": {"lr": 0.01, "momentum": 0.9}, "batch_schedule": {"batch_size": 32}}, 1)
    )
    assert cell[("block large · optimizer.momentum=0.0", 0.1, 256)]["diverged"] == 3
    html = (tmp_path / "h.html").read_text()
    assert "mean over seeds)" in html and "POOLED" not in html


def test_heatmap_says_what_it_pools_when_told_to_draw_fewer_panels(cli, store, tmp_path):
    result = cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--facet",
        "block",
        "--out",
        "h.html",
    )
    assert result.exit_code == 0, result.stderr
    assert "in 2 panels (by block)" in result.stdout
    assert result.stdout.rstrip().endswith("; POOLED over optimizer.momentum (2 values)")
    assert "POOLED over optimizer.momentum (2 values)" in (tmp_path / "h.html").read_text()
    result = cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--facet",
        "",
        "--out",
        "h.html",
    )
    # The blocks use different batch sizes, so no cell mixes them: only momentum is pooled.
    assert "panels" not in result.stdout
    assert result.stdout.rstrip().endswith("; POOLED over optimizer.momentum (2 values)")


def test_block_and_where_narrow_the_runs_and_nothing_is_then_pooled(cli, store, tmp_path):
    result = cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--block",
        "large",
        "--where",
        "optimizer_momentum = 0.9",
        "--out",
        "h.html",
    )
    assert result.exit_code == 0, result.stderr
    assert "panels" not in result.stdout and "POOLED" not in result.stdout
    rows = sql_rows(cli, tmp_path / "h.html.sql")
    assert len(rows) == 4 and {r["runs"] for r in rows} == {3}
    assert {r["panel"] for r in rows} == {"all"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--block", "medium"],
            "--block 'medium': study 'two' has no such block; its blocks: small, large",
        ),
        (
            ["--where", "momentum = 0.9"],
            "--where 'momentum = 0.9': not a condition on the runs "
            'view: Binder Error: Referenced column "momentum" not found in FROM clause!',
        ),
        (
            ["--where", "seed = 0; drop table epochs"],
            "--where 'seed = 0; drop table epochs': one condition, without ';'",
        ),
        (
            ["--facet", "optimizer.lr"],
            "--facet optimizer.lr: use block or an axis the heatmap "
            "chart does not show (block, optimizer.momentum)",
        ),
        (["--where", "seed = 7"], "heatmap: no runs of study 'two' match the selection"),
    ],
)
def test_selection_errors_are_one_line(cli, store, args, message):
    result = cli(
        "plot", "heatmap", "--x", "optimizer.lr", "--y", "batch_schedule.batch_size", *args
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {message}") and result.stderr.count("\n") == 1


def test_a_cell_where_every_run_diverged_has_its_own_colour_legend_and_legible_label(
    cli, store, tmp_path
):
    result = cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--block",
        "large",
        "--where",
        "optimizer_momentum = 0.0",
        "--out",
        "h.svg",
    )
    assert result.exit_code == 0, result.stderr
    svg = (tmp_path / "h.svg").read_text()
    # Two diverged cells (lr 0.1 at both batch sizes), drawn red, with a legend entry.
    assert len(re.findall(r'fill="#d62728"', svg)) >= 3  # two cells and the legend symbol
    assert ">all diverged<" in svg
    # Their labels are white on red, not white on white.
    labels = re.findall(r'<text[^>]*fill="(\w+)"[^>]*>3 diverged</text>', svg)
    assert labels == ["white", "white"]
    cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--block",
        "large",
        "--where",
        "optimizer_momentum = 0.0",
        "--out",
        "h.png",
    )
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--block",
        "large",
        "--where",
        "optimizer_momentum = 0.0",
        "--out",
        "h.html",
    )
    spec = (tmp_path / "h.html").read_text()
    assert '"all diverged"' in spec and '"#d62728"' in spec


@pytest.mark.parametrize("chart", ["curves", "sensitivity"])
def test_seed_bands_are_the_seeds_range_with_3_seeds_or_fewer(cli, store, tmp_path, chart):
    """With 3 seeds a 95% t-interval is the mean +- 2.5 standard deviations (12.7 with 2):
    the band is the seeds' own range instead, and the subtitle says so."""
    result = cli("plot", chart, "--block", "small", "--out", "c.html")
    assert result.exit_code == 0, result.stderr
    rows = sql_rows(cli, tmp_path / "c.html.sql")
    assert rows and all(r["n"] == 3 for r in rows)
    for r in rows:
        assert (r["low"], r["high"], r["band"]) == (r["lowest"], r["highest"], "seeds range")
        assert r["low"] <= r["mean"] <= r["high"] and r["high"] - r["low"] > 0
    html = (tmp_path / "c.html").read_text()
    assert "the seeds' range (lowest to highest) where n is 2 or 3" in html
    assert '{"field": "n", "type": "quantitative"}' in html  # n in the tooltip


@pytest.mark.parametrize("chart", ["curves", "sensitivity"])
def test_bands_from_4_seeds_are_a_t_interval_that_stays_within_the_metric(cli, tmp_path, chart):
    """5 seeds, four reaching accuracy 1 and one 0.5: the 95% t-interval of the mean, cut at
    1 (an accuracy never exceeds it) where it would reach past."""

    def spread(config, seed):
        return 1.0 if seed < 4 else 0.5

    make_store(tmp_path, STUDY.replace("seeds = [0, 1, 2]", "seeds = [0, 1, 2, 3, 4]"), spread)
    result = cli("plot", chart, "--block", "small", "--out", "c.html")
    assert result.exit_code == 0, result.stderr
    rows = sql_rows(cli, tmp_path / "c.html.sql")
    assert rows and all(r["n"] == 5 and r["band"] == "95% t-interval" for r in rows)
    for r in rows:
        half = stats.t.ppf(0.975, 4) * r["sd"] / math.sqrt(5)
        assert r["low"] == pytest.approx(max(0.0, r["mean"] - half))
        assert r["high"] == pytest.approx(min(1.0, r["mean"] + half))
    assert any(r["mean"] + stats.t.ppf(0.975, 4) * r["sd"] / math.sqrt(5) > 1 for r in rows)
    assert all(0 <= r["low"] <= r["high"] <= 1 for r in rows)


def test_curves_keep_blocks_and_other_axes_in_their_own_panels(cli, store, tmp_path):
    result = cli("plot", "curves", "--color", "optimizer.lr", "--out", "c.html")
    assert result.exit_code == 0, result.stderr
    assert "in 6 panels (by block, batch_schedule.batch_size, optimizer.momentum)" in result.stdout
    rows = sql_rows(cli, tmp_path / "c.html.sql")
    # The diverged runs are left out; every other line is one cell's three seeds.
    assert {r["n"] for r in rows} == {3}


def test_scaling_fits_a_line_per_panel(cli, store, tmp_path):
    result = cli("plot", "scaling", "--out", "s.html")
    assert result.exit_code == 0, result.stderr
    # Momentum colours the lines (the first axis left); each block has its panel.
    assert "in 2 panels (by block)" in result.stdout and "POOLED" not in result.stdout
    html = (tmp_path / "s.html").read_text()
    assert html.count("slope 0.00") == 3  # the best LR is 0.1 at both batch sizes...
    # ...except where lr 0.1 diverged: momentum 0 in the large block picks 0.01 everywhere.
    rows = sql_rows(cli, tmp_path / "s.html.sql")
    picks = {(r["panel"], r["color"], r["batch_size"]): r["optimal_lr"] for r in rows}
    assert picks[("block large", "0.0", 128)] == 0.01
    assert picks[("block large", "0.9", 128)] == 0.1
    assert picks[("block small", "0.9", 32)] == 0.1


def test_noise_scale_averages_its_parts_before_dividing(cli, tmp_path):
    """Two seeds: tr(Sigma) 1 and 3, |G|^2 1 and 0.1. The mean of their ratios is 15.5;
    McCandlish et al.'s estimate is the ratio of the means, 2 / 0.55."""
    from optlab.store import core as st

    db = make_store(tmp_path, STUDY.replace("seeds = [0, 1, 2]", "seeds = [0, 1]"), acc)
    with st.reading(db) as con:
        runs = con.execute(
            "select run_id, seed from runs where block = 'small' and "
            "optimizer_lr = 0.1 and batch_schedule_batch_size = 32"
        ).fetchall()
    parts = {0: (1.0, 1.0), 1: (3.0, 0.1)}
    events = [
        {
            "type": "probe",
            "run_id": rid,
            "epoch": 1,
            "step": 10,
            "probe": "grad_noise_scale",
            "values": {
                "trace_sigma": parts[seed][0],
                "grad_sq": parts[seed][1],
                "b_simple": parts[seed][0] / parts[seed][1],
            },
        }
        for rid, seed in runs
    ]
    with st.writing(db) as con:
        st.apply_events(con, events)
    rows = json.loads(
        cli(
            "query",
            "select block, cell, epoch, b_simple, runs from noise_scale",
            "--format",
            "json",
        ).stdout
    )
    assert len(rows) == 1 and rows[0]["runs"] == 2
    assert rows[0]["b_simple"] == pytest.approx(2.0 / 0.55)
    result = cli(
        "plot",
        "probes",
        "--probe",
        "grad_noise_scale",
        "--key",
        "b_simple",
        "--block",
        "small",
        "--out",
        "n.html",
    )
    assert result.exit_code == 0, result.stderr
    (row,) = sql_rows(cli, tmp_path / "n.html.sql")
    assert row["mean"] == pytest.approx(2.0 / 0.55) and row["n"] == 2
    assert "parts averaged before dividing" in (tmp_path / "n.html").read_text()


def test_colour_by_cell_draws_a_line_per_cell_across_blocks_that_vary_different_axes(
    cli, store, tmp_path
):
    result = cli("plot", "curves", "--color", "cell", "--x", "comm_rounds", "--out", "c.html")
    assert result.exit_code == 0, result.stderr
    assert "panels" not in result.stdout and "POOLED" not in result.stdout
    rows = sql_rows(cli, tmp_path / "c.html.sql")
    colours = {r["color"] for r in rows}
    assert (
        "small: optimizer.lr=0.01, batch_schedule.batch_size=32, optimizer.momentum=0.9" in colours
    )
    assert len(colours) == 4 + 8 - 2  # every cell but the two that diverged everywhere
    assert {r["x"] for r in rows} == {10, 20, 30}  # communication rounds


def test_the_readme_pooling_example_is_what_the_command_prints(cli, store):
    from tests.test_readme import transcripts

    (runs,) = [
        runs for _, comment, runs in transcripts() if comment and "tests/test_charts.py" in comment
    ]
    ((command, expected),) = runs
    result = cli("plot", *command.split()[2:])
    assert result.stdout.splitlines() == expected


def test_with_one_seed_a_line_chart_has_no_empty_band(cli, tmp_path):
    """An area layer with no values makes Vega warn of an infinite extent."""
    make_store(tmp_path, STUDY.replace("seeds = [0, 1, 2]", "seeds = [0]"), acc)
    cli("plot", "curves", "--block", "small", "--out", "c.html")
    spec = (tmp_path / "c.html").read_text()
    assert '"mark": {"type": "line"' in spec and '"type": "area"' not in spec


def test_sfo_whiskers_are_a_95_percent_t_interval_over_the_seeds_that_reached(cli, tmp_path):
    def norms(config, seed):  # seed s first reaches 0.5 at epoch s + 1: SFO 1000 (s + 1)
        return [[0.4, 0.3, 0.2], [0.9, 0.4, 0.3], [0.9, 0.8, 0.4]][seed]

    make_store(tmp_path, STUDY, acc, grad_norm=norms)
    result = cli("plot", "sfo", "--epsilon", "0.5", "--block", "small", "--out", "s.html")
    assert result.exit_code == 0, result.stderr
    rows = sql_rows(cli, tmp_path / "s.html.sql")
    assert len(rows) == 4 and all(r["reached"] == 3 for r in rows)
    half = stats.t.ppf(0.975, 2) * 1000 / math.sqrt(3)
    for r in rows:
        assert (r["mean"], r["low"], r["high"]) == pytest.approx((2000, 2000 - half, 2000 + half))
    assert "whiskers = its 95% t-interval" in (tmp_path / "s.html").read_text()


# Seed 001's three methods as one axis of whole optimizer tables, all of them sgd.
METHODS = """
name = "methods"
seeds = [0, 1, 2]
[base]
epochs = 3
dataset = { name = "synthetic" }
model = { name = "mlp" }
[[block]]
name = "all"
[block.grid]
optimizer = [
    { name = "sgd", lr = 0.1, momentum = 0.0, weight_decay = 0.0 },
    { name = "sgd", lr = 0.1, momentum = 0.0, weight_decay = 5e-4 },
    { name = "sgd", lr = 0.1, momentum = 0.9, weight_decay = 5e-4 },
]
"batch_schedule.batch_size" = [32, 64]
"""
LABELS = [
    "sgd momentum=0.0 weight_decay=0.0",
    "sgd momentum=0.0 weight_decay=0.0005",
    "sgd momentum=0.9 weight_decay=0.0005",
]


def test_plugin_tables_that_share_a_name_are_told_apart(cli, tmp_path):
    """Three sgd tables are three methods: a line, a heatmap row and a ranked optimizer
    each, labelled by what differs, never one 'sgd' pooled over them as if seeds."""

    def method_acc(config, seed):
        return 0.9 if config["optimizer"]["momentum"] else 0.5 + 0.001 * seed

    make_store(tmp_path, METHODS, method_acc)
    curves = cli("plot", "curves", "--out", "c.html")
    assert curves.exit_code == 0, curves.stderr
    assert "POOLED" not in curves.stdout
    assert "in 2 panels (by batch_schedule.batch_size)" in curves.stdout
    final = [r for r in sql_rows(cli, tmp_path / "c.html.sql") if r["epoch"] == 3]
    assert sorted({r["color"] for r in final}) == LABELS and {r["n"] for r in final} == {3}
    assert [r["mean"] for r in final if r["color"] == LABELS[2]] == pytest.approx([0.9, 0.9])
    heat = cli(
        "plot", "heatmap", "--x", "batch_schedule.batch_size", "--y", "optimizer", "--out", "h.html"
    )
    assert heat.exit_code == 0, heat.stderr
    cells = sql_rows(cli, tmp_path / "h.html.sql")
    assert sorted({r["y"] for r in cells}) == LABELS and {r["runs"] for r in cells} == {3}
    ranked = json.loads(cli("analyze", "ranking", "--json").stdout)["tables"]["ranking"]
    assert [r["optimizer"] for r in ranked][0] == LABELS[2] and len(ranked) == 3


def test_a_chart_added_as_one_function_and_one_row_reaches_the_cli_the_api_and_the_report(
    store, tmp_path, monkeypatch
):
    import altair as alt
    from typer.testing import CliRunner

    from optlab import open_store
    from optlab.charts import catalog
    from optlab.charts.figures import Chart, Figure, Option, Selection
    from optlab.charts.report import build_report
    from optlab.cli import plot

    def seeds_figure(con, study, axes, status, sel=Selection()):
        sql = (
            f"select seed, count(*) as runs from runs where study = '{study}' "
            f"and status = '{status}' group by seed order by seed"
        )
        rows = [{"seed": s, "runs": n} for s, n in con.execute(sql).fetchall()]
        chart = alt.Chart(alt.Data(values=rows)).mark_bar().encode(x="seed:O", y="runs:Q")
        return Figure("seeds", chart, sql, len(rows))

    row = Chart(
        "seeds",
        seeds_figure,
        "Runs per seed in one state.",
        (Option("status", "done", "Count the runs in this state."),),
        report=lambda facts: [("", {})],
    )
    monkeypatch.setitem(catalog.CHARTS, "seeds", row)

    group = plot.build(catalog.CHARTS)
    runner = CliRunner()
    shown = runner.invoke(group, ["seeds", "--help"])
    assert "Runs per seed in one state." in shown.output and "--status" in shown.output
    out = tmp_path / "s.html"
    drawn = runner.invoke(
        group, ["seeds", "--status", "diverged", "--store", str(store), "--out", str(out)]
    )
    assert drawn.exit_code == 0, drawn.output
    assert "seeds chart of 3 rows written to" in drawn.output
    assert "'diverged'" in (tmp_path / "s.html.sql").read_text()

    figure = open_store(store).plot("seeds")
    assert (figure.rows, figure.study) == (3, "two")
    assert "'done'" in figure.sql

    page, _, _ = build_report(store, None, tmp_path / "r.html")
    assert "<h3>seeds</h3>" in page.read_text()


def test_an_option_a_chart_does_not_take_is_one_line_naming_its_options(store):
    from optlab import open_store
    from optlab.errors import OptlabError

    with pytest.raises(
        OptlabError,
        match=r"^plot heatmap: no option 'colour'; its options are x, y, metric, relative_to$",
    ):
        open_store(store).plot("heatmap", colour="optimizer")
    with pytest.raises(OptlabError, match=r"^plot 'pie': charts are heatmap, curves, sensitivity"):
        open_store(store).plot("pie")


def test_a_cell_whose_runs_halving_stopped_says_so(cli, store, tmp_path):
    """Runs stopped at a rung (made so here by journaled-style decisions at epoch 3): the
    cell has no mean of finished runs, its own colour and a label that says where."""
    with st.writing(store) as con:
        ids = [
            r
            for (r,) in con.execute(
                "select run_id from runs where block = 'small' and optimizer_lr = 0.01 "
                "and batch_schedule_batch_size = 32"
            ).fetchall()
        ]
        st.apply_events(
            con,
            [
                {"type": "rung", "run_id": r, "epoch": 3, "decision": "stop", "reason": "x"}
                for r in ids
            ],
        )
    result = cli(
        "plot",
        "heatmap",
        "--x",
        "optimizer.lr",
        "--y",
        "batch_schedule.batch_size",
        "--block",
        "small",
        "--out",
        "h.svg",
    )
    assert result.exit_code == 0, result.stderr
    svg = (tmp_path / "h.svg").read_text()
    assert ">stopped early<" in svg
    assert f">{len(ids)} stopped at epoch 3<" in svg


WARMUP = """
name = "regimes"
seeds = [0, 1]
[base]
epochs = 3
dataset = { name = "synthetic", classes = 10 }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
lr_schedule = { name = "cosine" }
[[block]]
name = "grid"
[block.grid]
"dataset.examples_per_class" = [50, 500, 5000]
"lr_schedule.warmup_epochs" = [0, 5, 20]
"""


def warmup_acc(config, seed):
    """Regimes far apart (0.3, 0.6, 0.9); warmup helps only at 500 examples a class."""
    size, warmup = config["dataset"]["examples_per_class"], config["lr_schedule"]["warmup_epochs"]
    regime = {50: 0.3, 500: 0.6, 5000: 0.9}[size]
    return regime + (0.01 * warmup / 5 if size == 500 else 0.0) + 0.001 * seed


def test_heatmap_relative_to_a_baseline_row_shows_the_effect_within_each_column(cli, tmp_path):
    """Seed 002's question: warmup's effect within each data regime, smaller than the
    regimes' differences. Each cell minus the same column's warmup = 0 cell, on a
    diverging scale centred on 0."""
    from optlab.analysis.results import study_axes
    from optlab.charts.heatmap import heatmap_figure
    from optlab.store import views

    db = make_store(tmp_path, WARMUP, warmup_acc)
    with st.reading(db) as con:
        views.ensure_readable(con)
        study, axes = study_axes(con, None)
        figure = heatmap_figure(
            con,
            study,
            axes,
            "dataset.examples_per_class",
            "lr_schedule.warmup_epochs",
            "best_test_acc",
            relative_to="lr_schedule.warmup_epochs=0",
        )
    spec = figure.chart.to_dict()
    cells = {(d["x"], d["y"]): d for d in spec["data"]["values"]}
    assert cells[("500", "20")]["value"] == pytest.approx(0.04)
    assert cells[("500", "20")]["label"] == "+0.040"
    assert cells[("5000", "5")]["value"] == pytest.approx(0.0)
    assert all(cells[(x, "0")]["value"] == pytest.approx(0.0) for x in ("50", "500", "5000"))
    (scale,) = [
        layer["encoding"]["color"]["scale"]
        for layer in spec["layer"]
        if "color" in layer.get("encoding", {})
    ]
    assert scale["scheme"] == "redblue" and scale["domainMid"] == 0
    assert scale["domain"] == pytest.approx([-0.04, 0.04])
    assert "minus the same column's lr_schedule.warmup_epochs = 0 cell" in spec["title"]
    bad = cli(
        "plot",
        "heatmap",
        "--x",
        "dataset.examples_per_class",
        "--y",
        "lr_schedule.warmup_epochs",
        "--relative-to",
        "lr_schedule.warmup_epochs=3",
    )
    assert bad.exit_code == 1 and bad.stderr == (
        "Error: --relative-to 'lr_schedule.warmup_epochs=3': no cell has "
        "lr_schedule.warmup_epochs = 3; its values: 0, 5, 20\n"
    )
