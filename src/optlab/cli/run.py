"""optlab run: expand a study, skip what is done, run the rest on a warm worker pool."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from optlab.cli.common import StoreOption, err, handles_errors, out
from optlab.errors import ConfigError
from optlab.view import describe_axes

NAME = "run"
HELP = ("Run a study (default: the bundled quickstart). Runs already done in the store are "
        "skipped; failed runs are retried only with --retry-failed.")


@handles_errors
def command(
    study: Path = typer.Argument(None, help="Study file (TOML). Default: the quickstart.",
                                 show_default=False),
    gpus: str = typer.Option(None, "--gpus", help="GPUs to use: 0-7, 0,2,5, 0-3,6, all or "
                             "none. Default: all when a GPU is visible, else none."),
    per_gpu: int = typer.Option(1, "--per-gpu", help="Workers per GPU."),
    workers: int = typer.Option(None, "--workers", help="CPU workers (with --gpus none). "
                                "Default: one per core, at most one per run."),
    sets: list[str] = typer.Option([], "--set", help="Override a key: KEY=VALUE (repeatable)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed runs again."),
    data_dir: Path = typer.Option(Path("data"), "--data-dir", envvar="OPTLAB_DATA",
                                  help="Where datasets are kept and downloaded to."),
    store: Path = StoreOption,
) -> None:
    from optlab import devices
    from optlab.coordinator import execute, prepare, writer_lock
    from optlab.expand import all_runs, expand
    from optlab.store import check_store
    from optlab.study import load_study

    # Everything the user gave is checked before the store is touched.
    available = devices.visible_gpus()
    chosen = devices.parse_gpus(gpus if gpus is not None else ("all" if available else "none"),
                                available)
    devices.make_slots(chosen, per_gpu, workers)
    spec = load_study(study, sets)
    plans = expand(spec)
    total = len(all_runs(plans))
    check_store(store)
    # Datasets are fetched (or found missing) before any run starts or the store is touched.
    os.environ["OPTLAB_DATA"] = str(data_dir.resolve())
    prepare_datasets(spec, all_runs(plans), data_dir)
    with writer_lock(store):
        prepared = prepare(store, spec, plans, retry_failed)
        todo, states = prepared.todo, prepared.states
        if prepared.recovered:
            _report_recovery(prepared)
        if not todo:
            failed = sum(1 for s in states.values() if s == "failed")
            hint = f"; {failed} failed (run again with --retry-failed)" if failed else ""
            out.print(f"Nothing to run: all {total} runs of {spec.name} are finished{hint}.")
            return
        cpu_workers = workers if workers is not None else min(os.cpu_count() or 1, len(todo))
        slots = devices.make_slots(chosen, per_gpu, cpu_workers)
        where = (f"{len(chosen)} GPU(s) x {per_gpu}" if chosen else "CPU")
        out.print(f"{spec.name}: running {len(todo)} of {total} runs "
                  f"({total - len(todo)} already finished) on {len(slots)} worker(s) "
                  f"[{where}, {slots[0].threads} thread(s) each]; store {store}")
        outcome = execute(store, spec, todo, slots, out)
    _summary(spec.name, todo, outcome, store)
    if outcome.interrupted:
        raise typer.Exit(130)
    if any(s == "failed" for s in outcome.statuses.values()):
        raise typer.Exit(1)


def prepare_datasets(spec, runs, data_dir: Path) -> None:
    from optlab.registry import default_registry

    registry = default_registry()
    seen: set[str] = set()
    for run in runs:
        table = run.config["dataset"]
        key = repr(sorted(table.items()))
        if key in seen:
            continue
        seen.add(key)
        plugin = registry.get("dataset", table["name"])
        prepare = plugin.preparer()
        if prepare is None:
            continue
        params = plugin.params(**{k: v for k, v in table.items() if k != "name"})
        try:
            prepare(params, data_dir=str(data_dir))
        except (ValueError, OSError) as e:
            raise ConfigError(f"{spec.file}: dataset {e}") from None


def _report_recovery(prepared) -> None:
    counts: dict[str, int] = {}
    for status in prepared.recovered.values():
        counts[status] = counts.get(status, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.print(f"Recovered {len(prepared.recovered)} run(s) an earlier session left unfinished "
              f"({prepared.recovered_epochs} epochs from their journals): {states}; "
              "interrupted runs run again.")


def _summary(study: str, todo, outcome, store: Path) -> None:
    counts: dict[str, int] = {}
    for status in outcome.statuses.values():
        counts[status] = counts.get(status, 0) + 1
    not_run = len(todo) - len(outcome.statuses)
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    if not_run:
        parts.append(f"{not_run} not started")
    minutes, seconds = divmod(int(outcome.seconds), 60)
    head = "interrupted" if outcome.interrupted else "finished"
    out.print(f"{study}: {head} in {minutes}m{seconds:02d}s: {', '.join(parts) or 'nothing'}")
    by_id = {r.run_id: r for r in todo}
    for run_id, status in outcome.statuses.items():
        if status in ("failed", "diverged"):
            r = by_id[run_id]
            err.print(f"  {status} {run_id} {describe_axes(r.axes, r.seed)}: "
                      f"{outcome.errors.get(run_id, '')}", markup=False)
            if status == "failed":
                from optlab.store import log_path

                err.print(f"    log: {log_path(store, run_id)}", markup=False)
    if outcome.interrupted:
        out.print("Interrupted runs are resumable: run the same command again.")
