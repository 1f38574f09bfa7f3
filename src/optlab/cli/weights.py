"""optlab weights RUN_ID: where a run's saved weights are, or a copy of them."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, handles_errors, out
from optlab.store.manage import copy_weights, loading_code, saved_weights

NAME = "weights"
HELP = (
    "Print the path of a run's saved weights (a plain state_dict), or copy them with --to. "
    "Load: model = create the run's model plugin; model.load_state_dict(torch.load(path))."
)


@handles_errors
def command(
    run_id: str = typer.Argument(
        ..., help="The run id (or a unique prefix of it).", show_default=False
    ),
    to: Path = typer.Option(None, "--to", help="Copy the file here (a file or a folder)."),
    python: bool = typer.Option(
        False,
        "--python",
        help="Print the Python that rebuilds the run's model and loads the weights.",
    ),
    store: Path = StoreOption,
) -> None:

    _, path, build = saved_weights(store, run_id)
    if python:
        out.print(loading_code(path, build), end="", markup=False)
        return
    if to is None:
        out.print(str(path), markup=False)
        return
    target = copy_weights(path, to)
    out.print(f"copied {path} to {target}", markup=False)
