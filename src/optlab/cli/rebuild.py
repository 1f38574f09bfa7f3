"""optlab rebuild: a new store from the study records and run journals beside it."""

from __future__ import annotations

from pathlib import Path

from optlab.cli.common import StoreOption, handles_errors, out
from optlab.store.liveness import writer_lock
from optlab.store.manage import rebuild

NAME = "rebuild"
HELP = (
    "Make the store again from the study records and per-run journals kept beside it "
    "(after the store file was lost or damaged). The old file is kept aside."
)


@handles_errors
def command(store: Path = StoreOption) -> None:

    with writer_lock(store, "rebuild"):
        done = rebuild(store)
    states = ", ".join(f"{n} {s}" for s, n in done.by_status.items())
    out.print(
        f"Rebuilt {store}: {len(done.studies)} studies ({', '.join(done.studies)}), "
        f"{done.runs} runs ({states}), {done.epochs} epoch rows from {done.journals} "
        "journals; session history is not kept.",
        markup=False,
    )
    if done.missing:
        out.print(
            f"Not rebuilt (no study record: last run before optlab kept them): "
            f"{', '.join(done.missing)}; they stay in the old file.",
            markup=False,
        )
    if done.aside is not None:
        out.print(f"The old file is kept as {done.aside}.", markup=False)
