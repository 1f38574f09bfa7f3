"""optlab rm: remove runs with everything they left (rows, logs, checkpoints, weights)."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out
from optlab.store.liveness import writer_lock
from optlab.store.manage import plan_removal, remove

NAME = "rm"
HELP = (
    "Remove runs - by id, by a --where condition over the runs view, or a whole --study - "
    "with their epochs, probes, logs, checkpoints and weights. A run another study also "
    "has keeps its data. Asks first unless --yes."
)


@handles_errors
def command(
    run_ids: list[str] = typer.Argument(
        None, help="Run ids (or unique prefixes).", show_default=False
    ),
    where: str = typer.Option(
        None,
        "--where",
        help="An SQL condition over the runs view, "
        'e.g. "status = \'failed\'" or "optimizer_lr > 1".',
        show_default=False,
    ),
    study: str = typer.Option(
        None, "--study", help="Only this study's runs; alone, the whole study.", show_default=False
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
    store: Path = StoreOption,
) -> None:

    with writer_lock(store, "rm"):
        removal = plan_removal(store, run_ids or [], where, study)
        what = removal.describe()
        if not yes:
            try:
                sure = typer.confirm(f"Remove {what}?", default=False, err=True)
            except typer.Abort:
                sure = False
            if not sure:
                out.print("Nothing removed.")
                raise typer.Exit(1)
        remove(store, removal)
    out.print(f"Removed {what}.", markup=False)
