"""optlab plot ...: charts from the store."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out

app = typer.Typer(help="Charts from the store (.html self-contained, .png or .svg).",
                  no_args_is_help=True)


@app.command("heatmap")
@handles_errors
def heatmap(
    study: str = typer.Option(None, "--study", help="Study name (default: the only one)."),
    x: str = typer.Option(None, "--x", help="Dotted config path on the x axis, e.g. "
                          "optimizer.lr (default: the study's first axis)."),
    y: str = typer.Option(None, "--y", help="Dotted config path on the y axis (default: the "
                          "study's second axis)."),
    metric: str = typer.Option("best_test_acc", "--metric", help="REDUCER_COLUMN: best, final, "
                               "min, max or mean of an epochs column, per run; mean over seeds."),
    out_file: Path = typer.Option(None, "--out", help="Output .html, .png or .svg "
                                  "(default: STUDY_heatmap.html)."),
    store: Path = StoreOption,
) -> None:
    """A metric over two axes of a study, mean over seeds; failed and diverged cells marked."""
    from optlab import plot

    plot.parse_metric(metric)
    path, cells = plot.heatmap(store, out_file, study, x, y, metric)
    out.print(f"heatmap of {cells} cells written to {path} (its SQL: {path}.sql)")
