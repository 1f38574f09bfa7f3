"""optlab train: one configuration, in the foreground, into the store."""

from __future__ import annotations

from pathlib import Path

import typer

from optlab.cli.common import StoreOption, err, handles_errors, out
from optlab.execution import executors
from optlab.execution.launch import Launch, Part, launch
from optlab.study.expand import expand
from optlab.study.schema import single_run

NAME = "train"
HELP = (
    "Train one configuration: --set keys over a study's [base] (default: the quickstart's), "
    "as `python main.py --lr 0.1 --wd 5e-4` would. It lands in the store as a run of study "
    "'train' (with its provenance, journal and checkpoints); a finished identical run is not "
    "trained again."
)


@handles_errors
def command(
    study: Path = typer.Argument(
        None,
        help="Study file whose [base] to start from. Default: the quickstart.",
        show_default=False,
    ),
    sets: list[str] = typer.Option([], "--set", help="Override a key: KEY=VALUE (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="The run's seed."),
    gpus: str = typer.Option(
        None, "--gpus", help="The GPU to train on (0, 1, ...) or none. Default: a GPU if any."
    ),
    data_dir: Path = typer.Option(
        Path("data"), "--data-dir", envvar="OPTLAB_DATA", help="Where datasets are kept."
    ),
    checkpoint_dir: Path = typer.Option(
        None,
        "--checkpoint-dir",
        envvar="OPTLAB_CHECKPOINT_DIR",
        show_default=False,
        help="Where the run keeps its checkpoints and weights. Default: beside the store.",
    ),
    store: Path = StoreOption,
) -> None:

    spec = single_run(study, sets, seed)
    plans = expand(spec)
    # The union of every configuration trained so (matrix None: nothing is dropped).
    how = Launch(gpus, 1, 1, False, data_dir, checkpoint_dir, 600.0, executors.DEFAULT, {}, store)
    code = launch([Part(spec, plans, None)], how, out, err)[1]
    if code:
        raise typer.Exit(code)
