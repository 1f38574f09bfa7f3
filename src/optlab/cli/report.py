"""optlab report STUDY: one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.charts.report import build_report
from optlab.cli.common import StoreOption, handles_errors, out

NAME = "report"
HELP = (
    "One self-contained HTML file for a study: its matrix, status, the charts that fit its "
    "axes and the analyses."
)


@handles_errors
def command(
    study: str = typer.Argument(
        None, help="Study name (default: the only one).", show_default=False
    ),
    out_file: Path = typer.Option(None, "--out", help="Output .html (default: STUDY_report.html)."),
    epsilon: float = typer.Option(
        None,
        "--epsilon",
        help="Full gradient norm for the SFO chart "
        "and analysis (default: the median of the runs' lowest).",
    ),
    store: Path = StoreOption,
) -> None:

    path, charts, analyses = build_report(store, study, out_file, epsilon)
    out.print(f"report written to {path} ({charts} charts, {analyses} analyses)")
