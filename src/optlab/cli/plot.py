"""optlab plot ...: charts from the store."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out

app = typer.Typer(
    help="Charts from the store (.html self-contained, .png or .svg).", no_args_is_help=True
)


StudyOption = typer.Option(None, "--study", help="Study name (default: the only one).")
OutOption = typer.Option(
    None, "--out", help="Output .html, .png or .svg (default: STUDY_KIND.html)."
)
ColorOption = typer.Option(
    None,
    "--color",
    help="Axis that colours the lines (default: the "
    "optimizer when it varies, else the first axis); block; or cell "
    "(block and every axis: one line per cell, nothing pooled).",
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


def _selection(where: str | None, blocks: list[str] | None, facet: str | None):
    from optlab.charts.figures import Selection

    panels = None if facet is None else tuple(a.strip() for a in facet.split(",") if a.strip())
    return Selection(where, tuple(blocks or ()), panels)


def _draw(kind: str, store: Path, out_file: Path | None, study: str | None, sel, **options) -> None:
    """What `optlab.open_store(store).plot(kind, ...)` draws, saved (default
    STUDY_KIND.html)."""
    from optlab.api import open_store
    from optlab.charts import figures

    figures.check_out(out_file)
    figure = open_store(store).plot(
        kind, study=study, where=sel.where, blocks=sel.blocks, facet=sel.facet, **options
    )
    path = out_file or Path(f"{figure.study}_{kind}.html")
    figures.save(figure, path)
    out.print(figure.summary(path))


@app.command("heatmap")
@handles_errors
def heatmap(
    x: str = typer.Option(
        None,
        "--x",
        help="Dotted config path on the x axis, e.g. "
        "optimizer.lr (default: the study's first axis).",
    ),
    y: str = typer.Option(
        None, "--y", help="Dotted config path on the y axis (default: the study's second axis)."
    ),
    metric: str = typer.Option(
        "best_test_acc",
        "--metric",
        help="REDUCER_COLUMN: best, final, "
        "min, max or mean of an epochs column, per run; mean over seeds.",
    ),
    where: str = WhereOption,
    block: list[str] = BlockOption,
    facet: str = FacetOption,
    study: str = StudyOption,
    out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """A metric over two axes, mean over seeds, a panel per block and other axis; cells with
    no finished run coloured by why (diverged, failed, not yet run)."""
    from optlab.analysis.results import parse_metric

    parse_metric(metric)
    sel = _selection(where, block, facet)
    _draw("heatmap", store, out_file, study, sel, x=x, y=y, metric=metric)


@app.command("curves")
@handles_errors
def curves(
    metric: str = typer.Option(
        "test_acc", "--metric", help="An epochs column: test_acc, train_loss, epoch_lr, ..."
    ),
    x: str = typer.Option("epoch", "--x", help="epoch, step, samples, seconds or comm_rounds."),
    color: str = ColorOption,
    where: str = WhereOption,
    block: list[str] = BlockOption,
    facet: str = FacetOption,
    study: str = StudyOption,
    out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """A metric against epoch, steps, samples or seconds; mean over seeds with a 95% CI."""

    sel = _selection(where, block, facet)
    _draw("curves", store, out_file, study, sel, metric=metric, x=x, color=color)


@app.command("sensitivity")
@handles_errors
def sensitivity(
    metric: str = typer.Option("final_test_acc", "--metric", help="REDUCER_COLUMN per run."),
    color: str = ColorOption,
    where: str = WhereOption,
    block: list[str] = BlockOption,
    facet: str = FacetOption,
    study: str = StudyOption,
    out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """The final metric against the learning rate, per optimizer; mean with a 95% CI."""
    from optlab.analysis.results import parse_metric

    parse_metric(metric)
    sel = _selection(where, block, facet)
    _draw("sensitivity", store, out_file, study, sel, metric=metric, color=color)


@app.command("scaling")
@handles_errors
def scaling(
    metric: str = typer.Option("best_test_acc", "--metric", help="REDUCER_COLUMN per run."),
    color: str = ColorOption,
    where: str = WhereOption,
    block: list[str] = BlockOption,
    facet: str = FacetOption,
    study: str = StudyOption,
    out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """The optimal LR against batch size, log-log, with the fitted slope per line."""
    from optlab.analysis.results import parse_metric

    parse_metric(metric)
    sel = _selection(where, block, facet)
    _draw("scaling", store, out_file, study, sel, metric=metric, color=color)


@app.command("sfo")
@handles_errors
def sfo(
    epsilon: float = typer.Option(None, "--epsilon", help="The full gradient norm to reach."),
    where: str = WhereOption,
    block: list[str] = BlockOption,
    study: str = StudyOption,
    out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """Samples (SFO) to reach a full gradient norm <= epsilon, one bar per cell."""

    sel = _selection(where, block, None)
    _draw("sfo", store, out_file, study, sel, epsilon=epsilon)


@app.command("gradnorm")
@handles_errors
def gradnorm(
    epsilon: float = typer.Option(
        None, "--epsilon", help="Mark where each schedule first reaches this full gradient norm."
    ),
    x: str = typer.Option("sfo", "--x", help="sfo, sfo_full_batches, step or epoch."),
    where: str = WhereOption,
    block: list[str] = BlockOption,
    study: str = StudyOption,
    out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """Full gradient norm against SFO per schedule (seed 004's figure), log-log, with the
    epsilon line and each schedule's crossing."""

    sel = _selection(where, block, None)
    _draw("gradnorm", store, out_file, study, sel, epsilon=epsilon, x=x)


@app.command("probes")
@handles_errors
def probes(
    probe: str = typer.Option(None, "--probe", help="Probe name (default: the first)."),
    key: str = typer.Option("global", "--key", help="Key: global, or a layer name."),
    x: str = typer.Option("epoch", "--x", help="epoch or step."),
    color: str = ColorOption,
    where: str = WhereOption,
    block: list[str] = BlockOption,
    facet: str = FacetOption,
    study: str = StudyOption,
    out_file: Path = OutOption,
    store: Path = StoreOption,
) -> None:
    """A probe's value against epoch or step; mean over seeds with a 95% CI."""

    sel = _selection(where, block, facet)
    _draw("probes", store, out_file, study, sel, probe=probe, key=key, x=x, color=color)
