"""optlab merge: other stores' studies and runs brought into this one."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out
from optlab.errors import UsageError
from optlab.store.bundle import is_bundle, unpacked
from optlab.store.liveness import writer_lock
from optlab.store.merge import describe, merge

NAME = "merge"
HELP = (
    "Bring other stores' studies, runs, epochs and probes into this one (parts of a "
    "study run on other machines). The same run id is the same run: the finished copy "
    "is kept."
)


@handles_errors
def command(
    others: list[Path] = typer.Argument(
        ...,
        help="Store files to merge in (.duckdb), or bundles (.tar, from optlab export "
        "--format bundle).",
        show_default=False,
    ),
    link: bool = typer.Option(
        False,
        "--link",
        help="Leave the merged runs' checkpoints and weights in the other store's folders "
        "(named there, never removed from here) instead of copying them into this store's.",
    ),
    store: Path = StoreOption,
) -> None:

    with writer_lock(store, "merge"), contextlib.ExitStack() as scratch:
        stores = []
        for other in others:
            if is_bundle(other):
                if link:
                    raise UsageError(f"{other}: a bundle's files are copied in; drop --link")
                stores.append(scratch.enter_context(unpacked(other, store)))
            else:
                stores.append(other)
        for done, given in zip(merge(store, stores, link=link), others, strict=True):
            done.other = given
            out.print(describe(done), markup=False)
