"""[block.search]: Sobol and random search spaces, the same points on every machine, growable."""

from __future__ import annotations

import json
import math

import pytest

from optlab.study.expand import expand
from optlab.study.schema import load_study
from tests.conftest import optlab, write_study

STUDY = """
name = "tune"
seeds = [0]
[base]
epochs = 2
dataset = {{ name = "synthetic", classes = 3, shape = [1, 4, 4], train_size = 48, test_size = 24 }}
model = {{ name = "mlp", hidden = [8] }}
optimizer = {{ name = "sgd", lr = 0.1, momentum = 0.9 }}
batch_schedule = {{ name = "constant", batch_size = 16 }}
[[block]]
name = "tune"
[block.search]
kind = "{kind}"
n = {n}
"optimizer.lr" = {{ log_uniform = [1e-4, 1.0] }}
"optimizer.weight_decay" = {{ choice = [0.0, 5e-4] }}
optimizer.momentum = {{ uniform = [0.8, 0.99] }}
"""


def plan(tmp_path, kind="sobol", n=6, name="tune.toml"):
    path = write_study(tmp_path, text=STUDY.format(kind=kind, n=n), name=name)
    (block,) = expand(load_study(path))
    return block


def test_show_lists_the_drawn_points(cli, tmp_path):
    write_study(tmp_path, text=STUDY.format(kind="sobol", n=4), name="tune.toml")
    result = cli("show", "tune.toml")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[3:] == [
        "  search (sobol, n = 4, seed 0): 4 points",
        "    1. optimizer.lr=0.252547, optimizer.weight_decay=0.0005, optimizer.momentum=0.868916",
        "    2. optimizer.lr=0.000165193, optimizer.weight_decay=0, optimizer.momentum=0.969125",
        "    3. optimizer.lr=0.00217543, optimizer.weight_decay=0.0005, "
        "optimizer.momentum=0.800751",
        "    4. optimizer.lr=0.0106831, optimizer.weight_decay=0, optimizer.momentum=0.941038",
    ]


def test_the_same_file_gives_the_same_points_and_run_ids(tmp_path):
    first, again = plan(tmp_path), plan(tmp_path, name="copy.toml")
    assert first.points == again.points
    assert [r.run_id for r in first.runs] == [r.run_id for r in again.runs]
    assert len({r.run_id for r in first.runs}) == 6
    for point, run in zip(first.points, first.runs, strict=True):
        assert run.config["optimizer"]["lr"] == point["optimizer.lr"]
        assert run.axes == point


@pytest.mark.parametrize("kind", ["sobol", "random"])
def test_raising_n_keeps_the_points_already_drawn(tmp_path, kind):
    small, large = plan(tmp_path, kind, 5), plan(tmp_path, kind, 12, name="more.toml")
    assert large.points[:5] == small.points
    assert [r.run_id for r in large.runs][:5] == [r.run_id for r in small.runs]


def test_points_lie_in_their_ranges_and_sobol_stratifies_them(tmp_path):
    for kind in ("sobol", "random"):
        points = plan(tmp_path, kind, 64).points
        assert all(
            1e-4 <= p["optimizer.lr"] <= 1.0
            and 0.8 <= p["optimizer.momentum"] <= 0.99
            and p["optimizer.weight_decay"] in (0.0, 5e-4)
            for p in points
        )
        bins = [0] * 8  # log10(lr) from -4 to 0 in 8 equal parts
        for p in points:
            bins[min(int((math.log10(p["optimizer.lr"]) + 4) / 0.5), 7)] += 1
        if kind == "sobol":  # 64 Sobol points: exactly 8 in each eighth of every axis
            assert bins == [8] * 8
            assert sum(p["optimizer.weight_decay"] == 0.0 for p in points) == 32
        else:
            assert bins != [8] * 8
    assert plan(tmp_path, "random").points != plan(tmp_path, "sobol").points


@pytest.mark.slow  # real worker processes
def test_a_grown_search_runs_only_its_new_points(tmp_path):
    write_study(tmp_path, text=STUDY.format(kind="sobol", n=2), name="tune.toml")
    optlab("run", "tune.toml", "--workers", "1", cwd=tmp_path, check=True)
    write_study(tmp_path, text=STUDY.format(kind="sobol", n=3), name="tune.toml")
    proc = optlab("run", "tune.toml", "--workers", "1", cwd=tmp_path, check=True)
    assert "running 1 of 3 runs (2 already finished)" in proc.stdout
    rows = json.loads(
        optlab(
            "query",
            "select optimizer_lr from runs where status = 'done' order by position",
            "--format",
            "json",
            cwd=tmp_path,
            check=True,
        ).stdout
    )
    assert [r["optimizer_lr"] for r in rows] == [0.252547, 0.000165193, 0.00217543]


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (
            ('kind = "sobol"', 'kind = "halton"'),
            "search.kind: use sobol or random (given 'halton')",
        ),
        (("n = 6", "n = 0"), "search.n: how many points to draw, a whole number >= 1 (given 0)"),
        (
            ("log_uniform = [1e-4, 1.0]", "log_uniform = [0.0, 1.0]"),
            "search.optimizer.lr: log_uniform needs low > 0 (given [0.0, 1.0])",
        ),
        (
            ("uniform = [0.8, 0.99]", "uniform = [0.99, 0.8]"),
            "search.optimizer.momentum: uniform needs [low, high] with low < high "
            "(given [0.99, 0.8])",
        ),
        (
            ("choice = [0.0, 5e-4]", "choice = []"),
            "search.optimizer.weight_decay: choice needs a list of values (given [])",
        ),
        (
            ("log_uniform = [1e-4, 1.0]", "between = [1e-4, 1.0]"),
            "search.optimizer.lr: give one range: { log_uniform = [1e-4, 1.0] }, { uniform = [0.8, "
            "0.99] } or { choice = [0.0, 5e-4] } (given {'between': [0.0001, 1.0]})",
        ),
        (('"optimizer.lr"', '"optimizer.lrr"'), "axis optimizer.lrr: no such key; sgd takes: "),
    ],
)
def test_bad_search_tables_are_one_line_errors(cli, tmp_path, replace, message):
    write_study(tmp_path, text=STUDY.format(kind="sobol", n=6).replace(*replace), name="bad.toml")
    result = cli("show", "bad.toml")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: bad.toml: block 'tune': {message}")
    assert result.stderr.count("\n") == 1


def test_a_search_too_large_is_refused_before_it_is_drawn(cli, tmp_path):
    write_study(tmp_path, text=STUDY.format(kind="sobol", n=10**12), name="huge.toml")
    result = cli("show", "huge.toml")
    assert result.exit_code == 1 and result.stderr.startswith(
        "Error: huge.toml: the study expands to up to 1,000,000,000,000 runs, more than the "
        "limit of 100,000"
    )


def test_optimal_of_a_search_ranks_its_drawn_points(cli, tmp_path):
    """A search draws one point a cell: no optimum of the LR alone exists (each group tried
    one value), so analyze optimal ranks the points instead of naming an 'optimum'."""
    from tests.synth import make_store

    text = STUDY.format(kind="sobol", n=6).replace("seeds = [0]", "seeds = [0, 1]")
    make_store(tmp_path, text, lambda c, s: 1.0 - abs(math.log10(c["optimizer"]["lr"]) + 2))
    out = json.loads(cli("analyze", "optimal", "--json").stdout)
    assert {r["optimum"] for r in out["tables"]["optimal"]} == {None}
    points = out["tables"]["ranked_points"]
    assert [p["rank"] for p in points] == [1, 2, 3, 4, 5, 6] and {p["seeds"] for p in points} == {2}
    means = [p["mean"] for p in points]
    assert means == sorted(means, reverse=True)
    assert "ranked_points ranks the points by their mean over seeds" in out["findings"]["note"]


def test_the_default_heatmap_of_a_search_draws_its_points_in_one_panel(cli, tmp_path):
    """Each drawn point has its own value of every searched axis: those values are not
    panels (six panels of one cell each before), and nothing is pooled."""
    from tests.synth import make_store

    make_store(tmp_path, STUDY.format(kind="sobol", n=6), lambda c, s: c["optimizer"]["lr"])
    result = cli(
        "plot", "heatmap", "--x", "optimizer.lr", "--y", "optimizer.momentum", "--out", "h.html"
    )
    assert result.exit_code == 0, result.stderr
    assert "panels" not in result.stdout and "POOLED" not in result.stdout
    cells = json.loads(
        cli("query", (tmp_path / "h.html.sql").read_text(), "--format", "json").stdout
    )
    assert len(cells) == 6 and {c["runs"] for c in cells} == {1}
