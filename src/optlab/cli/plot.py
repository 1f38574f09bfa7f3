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


StudyOption = typer.Option(None, "--study", help="Study name (default: the only one).")
OutOption = typer.Option(None, "--out", help="Output .html, .png or .svg (default: "
                         "STUDY_KIND.html).")
ColorOption = typer.Option(None, "--color", help="Axis that colours the lines (default: the "
                           "optimizer when it varies, else the first axis).")


def _draw(kind: str, store: Path, out_file: Path | None, study: str | None, make) -> None:
    from optlab import plot

    path, rows = plot.draw(store, out_file, study, kind, make)
    out.print(f"{kind} chart of {rows} rows written to {path} (its SQL: {path}.sql)")


@app.command("curves")
@handles_errors
def curves(
    metric: str = typer.Option("test_acc", "--metric", help="An epochs column: test_acc, "
                               "train_loss, epoch_lr, ..."),
    x: str = typer.Option("epoch", "--x", help="epoch, step, samples or seconds."),
    color: str = ColorOption, study: str = StudyOption, out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """A metric against epoch, steps, samples or seconds; seed bands."""
    from optlab import charts

    _draw("curves", store, out_file, study,
          lambda con, st, axes: charts.curves_figure(con, st, axes, metric, x, color))


@app.command("sensitivity")
@handles_errors
def sensitivity(
    metric: str = typer.Option("final_test_acc", "--metric", help="REDUCER_COLUMN per run."),
    color: str = ColorOption, study: str = StudyOption, out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """The final metric against the learning rate, per optimizer; seed bands."""
    from optlab import charts, plot

    plot.parse_metric(metric)
    _draw("sensitivity", store, out_file, study,
          lambda con, st, axes: charts.sensitivity_figure(con, st, axes, metric, color))


@app.command("scaling")
@handles_errors
def scaling(
    metric: str = typer.Option("best_test_acc", "--metric", help="REDUCER_COLUMN per run."),
    study: str = StudyOption, out_file: Path = OutOption, store: Path = StoreOption,
) -> None:
    """The optimal LR against batch size, log-log, with the fitted slope."""
    from optlab import charts, plot

    plot.parse_metric(metric)
    _draw("scaling", store, out_file, study,
          lambda con, st, axes: charts.scaling_figure(con, st, axes, metric))


@app.command("sfo")
@handles_errors
def sfo(
    epsilon: float = typer.Option(None, "--epsilon", help="The full gradient norm to reach."),
    study: str = StudyOption, out_file: Path = OutOption, store: Path = StoreOption,
) -> None:
    """Samples (SFO) to reach a full gradient norm <= epsilon, per schedule."""
    from optlab import charts

    _draw("sfo", store, out_file, study,
          lambda con, st, axes: charts.sfo_figure(con, st, axes, epsilon))


@app.command("probes")
@handles_errors
def probes(
    probe: str = typer.Option(None, "--probe", help="Probe name (default: the first)."),
    key: str = typer.Option("global", "--key", help="Key: global, or a layer name."),
    x: str = typer.Option("epoch", "--x", help="epoch or step."),
    color: str = ColorOption, study: str = StudyOption, out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """A probe's value against epoch or step; seed bands."""
    from optlab import charts

    _draw("probes", store, out_file, study,
          lambda con, st, axes: charts.probes_figure(con, st, axes, probe, key, x, color))
