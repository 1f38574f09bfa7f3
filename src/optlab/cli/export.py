"""optlab export STUDY: a study's runs, epochs and probes as files."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out
from optlab.errors import UsageError

NAME = "export"
HELP = (
    "Write a study's results as files: csv or parquet tables, or the seed projects' "
    "layouts (seed001: results.csv + history JSON; seed004: train/test/norm/lr_bs CSVs)."
)


@handles_errors
def command(
    study: str = typer.Argument(
        None, help="Study name (default: the only one).", show_default=False
    ),
    to: Path = typer.Option(None, "--to", help="Folder to write in (default: STUDY_export)."),
    fmt: str = typer.Option("csv", "--format", help="csv, parquet, seed001 or seed004."),
    store: Path = StoreOption,
) -> None:
    from optlab.export import FORMATS, export

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    name, folder, files = export(store, study, to, fmt)
    out.print(f"{name}: {len(files)} files written in {folder} ({fmt})")
