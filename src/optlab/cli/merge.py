"""optlab merge: other stores' studies and runs brought into this one."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out

NAME = "merge"
HELP = (
    "Bring other stores' studies, runs, epochs and probes into this one (parts of a "
    "study run on other machines). The same run id is the same run: the finished copy "
    "is kept."
)


@handles_errors
def command(
    others: list[Path] = typer.Argument(
        ..., help="Store files to merge in (.duckdb).", show_default=False
    ),
    link: bool = typer.Option(
        False,
        "--link",
        help="Leave the merged runs' checkpoints and weights in the other store's folders "
        "(named there, never removed from here) instead of copying them into this store's.",
    ),
    store: Path = StoreOption,
) -> None:
    from optlab.liveness import writer_lock
    from optlab.merge import describe, merge

    with writer_lock(store, "merge"):
        for done in merge(store, others, link=link):
            out.print(describe(done), markup=False)
