"""optlab plot ...: charts from the store, a command per row of the table of charts."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from optlab.api import open_store  # the API imports the analyses and charts' deps
from optlab.charts import figures
from optlab.charts.catalog import CHARTS
from optlab.charts.figures import Chart
from optlab.cli.common import StoreOption, handles_errors, out

StudyOption = typer.Option(None, "--study", help="Study name (default: the only one).")
OutOption = typer.Option(
    None, "--out", help="Output .html, .png or .svg (default: STUDY_KIND.html)."
)
WhereOption = typer.Option(
    None,
    "--where",
    help="Only runs meeting this SQL condition on the "
    'runs view, e.g. "batch_schedule_batch_size = 32".',
)
BlockOption = typer.Option(None, "--block", help="Only this block (repeatable).")
FacetOption = typer.Option(
    None,
    "--facet",
    help="Panels by these (comma-separated: block and "
    "axes not on the chart). Default: block and every other axis that "
    "varies. Whatever is left is pooled, and the chart says so.",
)


def _parameters(chart: Chart) -> list[inspect.Parameter]:
    """The command's options: the chart's own (from its row), then the selection's."""

    def option(name: str, default: Any, kind: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind
        )

    own = [
        option(
            o.name, typer.Option(o.default, f"--{o.name.replace('_', '-')}", help=o.help), o.type
        )
        for o in chart.options
    ]
    return [
        *own,
        option("where", WhereOption, str),
        option("block", BlockOption, list[str]),
        *([option("facet", FacetOption, str)] if chart.facet else []),
        option("study", StudyOption, str),
        option("out_file", OutOption, Path),
        option("store", StoreOption, Path),
    ]


def command(chart: Chart):
    """``optlab plot NAME``: the chart ``Store.plot(NAME)`` draws, saved (default
    STUDY_KIND.html), with the line that says what it shows and pools."""

    def plot(**given: Any) -> None:

        store, out_file, study = given.pop("store"), given.pop("out_file"), given.pop("study")
        where, blocks, facet = given.pop("where"), given.pop("block"), given.pop("facet", None)
        panels = None if facet is None else tuple(a.strip() for a in facet.split(",") if a.strip())
        figures.check_out(out_file)
        figure = open_store(store).plot(
            chart.name, study=study, where=where, blocks=tuple(blocks or ()), facet=panels, **given
        )
        path = out_file or Path(f"{figure.study}_{chart.name}.html")
        figures.save(figure, path)
        out.print(figure.summary(path))

    params = _parameters(chart)
    plot.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    plot.__annotations__ = {p.name: p.annotation for p in params}
    plot.__doc__ = chart.help
    plot.__name__ = chart.name
    return handles_errors(plot)


def build(charts: dict[str, Chart]) -> typer.Typer:
    """The ``plot`` command group, one command per chart of ``charts``."""
    group = typer.Typer(
        help="Charts from the store (.html self-contained, .png or .svg).", no_args_is_help=True
    )
    for name, chart in charts.items():
        group.command(name)(command(chart))
    return group


app = build(CHARTS)
