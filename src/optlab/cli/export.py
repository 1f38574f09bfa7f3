"""optlab export STUDY: a study's runs, epochs and probes as files."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.analysis.export import FORMATS, export
from optlab.analysis.results import open_study
from optlab.cli.common import StoreOption, handles_errors, out
from optlab.errors import UsageError
from optlab.store.bundle import write_bundle

NAME = "export"
HELP = (
    "Write a study's results as files: csv or parquet tables, or the seed projects' "
    "layouts (seed001: results.csv + history JSON; seed004: train/test/norm/lr_bs CSVs), "
    "or one bundle file (STUDY.tar) that `optlab merge` reads into another store."
)


@handles_errors
def command(
    study: str = typer.Argument(
        None, help="Study name (default: the only one).", show_default=False
    ),
    to: Path = typer.Option(
        None,
        "--to",
        help="Folder to write in (default: STUDY_export); with bundle, the file (STUDY.tar).",
    ),
    fmt: str = typer.Option("csv", "--format", help="csv, parquet, seed001, seed004 or bundle."),
    store: Path = StoreOption,
) -> None:

    if fmt == "bundle":
        with open_study(store, study) as (_, name, _):
            pass
        path, runs = write_bundle(store, name, to or Path(f"{name}.tar"))
        size = path.stat().st_size / 2**20
        out.print(
            f"{name}: {runs} runs with their epochs, probes, journals, logs and kept files in "
            f"{path} ({size:.1f} MB); `optlab merge {path.name}` reads it into another store",
            markup=False,
        )
        return
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)} or bundle")
    name, folder, files = export(store, study, to, fmt)
    out.print(f"{name}: {len(files)} files written in {folder} ({fmt})")
