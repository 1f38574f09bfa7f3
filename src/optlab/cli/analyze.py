"""optlab analyze NAME: the seed projects' questions answered with statistics."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from optlab.analysis.analyze import ANALYSES
from optlab.api import open_store
from optlab.charts.report import render_result
from optlab.cli.common import StoreOption, handles_errors, out

NAME = "analyze"
HELP = (
    "Named analyses of a study: "
    + "; ".join(f"{a.name} ({a.help})" for a in ANALYSES.values())
    + "."
)
_NAMES = ", ".join(list(ANALYSES)[:-1]) + " or " + list(ANALYSES)[-1]


@handles_errors
def command(
    analysis: str = typer.Argument(..., help=f"{_NAMES}."),
    study: str = typer.Option(None, "--study", help="Study name (default: the only one)."),
    metric: str = typer.Option(
        "best_test_acc",
        "--metric",
        help="REDUCER_COLUMN per run, as in "
        "plot: best, final, min, max or mean of an epochs column.",
    ),
    param: str = typer.Option(
        None,
        "--param",
        help="optimal: the hyperparameter to optimise (default optimizer.lr when varied).",
    ),
    epsilon: float = typer.Option(None, "--epsilon", help="sfo: the full gradient norm to reach."),
    by: str = typer.Option(
        None,
        "--by",
        help="budget: what is compared (default optimizer; or an axis).",
        show_default=False,
    ),
    target: str = typer.Option(
        None,
        "--target",
        help="profile: COLUMN=VALUE to reach, such as val_acc=0.9.",
        show_default=False,
    ),
    time: str = typer.Option(
        "steps", "--time", help="profile: time in steps, sfo (samples) or seconds."
    ),
    order: str = typer.Option(
        "median-then-best",
        "--order",
        help="profile: median-then-best (a configuration's median over seeds, then the best "
        "configuration) or best-then-median (AlgoPerf's: the best configuration per seed, "
        "then the median over seeds).",
    ),
    margin: float = typer.Option(
        None,
        "--margin",
        help="scaling: the equivalence margin of a rule check, in the metric's units "
        "(default 0.01 for an accuracy, 2% of the reference's mean otherwise).",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
    store: Path = StoreOption,
) -> None:

    result = open_store(store).analyze(
        analysis,
        study,
        metric,
        param=param,
        epsilon=epsilon,
        seed=seed,
        by=by,
        target=target,
        time=time,
        order=order,
        margin=margin,
    )
    if as_json:
        out.print(json.dumps(result.to_json(), indent=2), markup=False)
        return
    render_result(result, out)
