"""optlab run: expand a study, skip what is done, run the rest on a warm worker pool."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from optlab.cli.common import (
    BlockOption,
    OnlyOption,
    StoreOption,
    WhereOption,
    err,
    handles_errors,
    out,
)
from optlab.errors import UsageError
from optlab.execution import executors
from optlab.execution.launch import Launch, launch, plan_parts
from optlab.execution.selection import Selection

NAME = "run"
HELP = (
    "Run a study (default: the bundled quickstart). Runs already done in the store are "
    "skipped; failed runs are retried only with --retry-failed."
)


AddressOption = typer.Option(
    None,
    "--address",
    help="With --executor ray: the cluster to join, auto or "
    "HOST:PORT. Default: start Ray on this machine. Short for --executor-opt address=.",
    show_default=False,
)
StopAfterOption = typer.Option(
    None,
    "--stop-after",
    help="End the session cleanly after this long (11h30m, 90m, 45s): no run starts "
    "then, and those training stop at their epoch's end, checkpointed; exit 75, and "
    "the same command goes on. For a notebook session or an allocation that ends.",
    show_default=False,
)
ExecutorOptOption = typer.Option(
    [],
    "--executor-opt",
    help="An option of the executor, KEY=VALUE (repeatable); optlab plugins executor "
    "lists each executor's.",
    show_default=False,
)


@handles_errors
def command(
    studies: list[Path] = typer.Argument(
        None,
        help="Study files (TOML); several run together on one pool into the store, each "
        "under its own name. Default: the quickstart.",
        show_default=False,
    ),
    gpus: str = typer.Option(
        None,
        "--gpus",
        help="GPUs to use: 0-7, 0,2,5, 0-3,6, all or "
        "none. Default: all when a GPU is visible, else none.",
    ),
    per_gpu: int = typer.Option(1, "--per-gpu", help="Workers per GPU."),
    workers: int = typer.Option(
        None,
        "--workers",
        help="CPU workers (with --gpus none). Default: one per core, at most one per run.",
    ),
    sets: list[str] = typer.Option([], "--set", help="Override a key: KEY=VALUE (repeatable)."),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Run failed runs again (from their last checkpoint, when they have one).",
    ),
    no_early_stop: bool = typer.Option(
        False,
        "--no-early-stop",
        help="Do not stop runs early: blocks with early_stop train every run to its end, "
        "and runs stopped before go on from their checkpoint at the rung.",
    ),
    data_dir: Path = typer.Option(
        Path("data"),
        "--data-dir",
        envvar="OPTLAB_DATA",
        help="Where datasets are kept and downloaded to.",
    ),
    checkpoint_dir: Path = typer.Option(
        None,
        "--checkpoint-dir",
        envvar="OPTLAB_CHECKPOINT_DIR",
        show_default=False,
        help="Where runs keep their checkpoints and saved weights (a folder per run). "
        "Default: beside the store (optlab.checkpoints/ for optlab.duckdb).",
    ),
    stall_timeout: float = typer.Option(
        600.0,
        "--stall-timeout",
        envvar="OPTLAB_STALL_TIMEOUT",
        help="Seconds a worker may go without progress (stopped, hung) before it is killed "
        "and its run marked failed (resumable with --retry-failed).",
    ),
    max_runs: int = typer.Option(
        None,
        "--max-runs",
        envvar="OPTLAB_MAX_RUNS",
        help="Refuse a study that expands to more runs than this (default 100,000).",
        show_default=False,
    ),
    executor_name: str = typer.Option(
        executors.DEFAULT,
        "--executor",
        help="Where runs train: local (this machine) or ray (a Ray "
        "cluster; pip install 'optlab[ray]'). See optlab plugins executor.",
    ),
    stop_after: str = StopAfterOption,
    address: str = AddressOption,
    executor_opts: list[str] = ExecutorOptOption,
    blocks: list[str] = BlockOption,
    only: list[str] = OnlyOption,
    where: str = WhereOption,
    store: Path = StoreOption,
) -> None:
    # Everything the user gave is checked before the store is touched.
    session = _checked(stall_timeout, stop_after)
    options = executors.parse_options(executor_opts, address)
    executors.check(executor_name, options, gpus, per_gpu, workers)  # before anything slow
    chosen = Selection(blocks, only, where)
    parts = plan_parts(list(studies or [None]), sets, max_runs, chosen)
    code = launch(
        parts,
        Launch(
            gpus,
            per_gpu,
            workers,
            retry_failed,
            data_dir,
            checkpoint_dir,
            stall_timeout,
            executor_name,
            options,
            store,
            early_stop=not no_early_stop,
            stop_after=session,
        ),
        out,
        err,
    )[1]
    if code:
        raise typer.Exit(code)


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration(text: str) -> float:
    """Seconds in ``11h30m``, ``90m``, ``45s``, ``1h5m30s`` or a plain number of seconds."""
    given = text.strip()
    found = DURATION.fullmatch(given)
    try:
        seconds = float(given)
    except ValueError:
        seconds = None
        if found and given:
            h, m, s = (float(g) if g else 0.0 for g in found.groups())
            seconds = 3600 * h + 60 * m + s
    if seconds is None or not seconds > 0:
        raise UsageError(
            f"--stop-after {text!r}: give a duration above 0 such as 11h30m, 90m or 45s"
        )
    return seconds


def _checked(stall_timeout: float, stop_after: str | None) -> float | None:
    """--stall-timeout checked; --stop-after in seconds (None without it)."""
    if stall_timeout <= 0:
        raise UsageError(f"--stall-timeout {stall_timeout:g}: give a number of seconds > 0")
    return duration(stop_after) if stop_after is not None else None
