"""optlab query: SQL over the store, opened read-only."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out
from optlab.errors import OptlabError, UsageError
from optlab.store.query import FORMATS, render, run_sql

NAME = "query"
HELP = (
    "Run SQL over the store (read-only). Tables and views: studies, runs, epochs, probes, "
    "sessions, run_summary, cell_summary, and the table macros reach_accuracy(target) and "
    "reach_grad_norm(epsilon); every config value is a column of runs (optimizer_lr, ...)."
)


@handles_errors
def command(
    sql: str = typer.Argument(..., help="The SQL to run."),
    fmt: str = typer.Option("table", "--format", help="table, csv, json or markdown."),
    out_file: Path = typer.Option(None, "--out", help="Write to this file instead."),
    store: Path = StoreOption,
) -> None:

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    columns, rows = run_sql(store, sql)
    text = render(columns, rows, fmt)
    if out_file is None:
        out.print(text, end="", markup=False)
        return
    try:
        out_file.write_text(text)
    except OSError as e:
        raise OptlabError(f"--out {out_file}: cannot write: {e.strerror or e}") from None
    out.print(f"{len(rows)} rows written to {out_file}")
