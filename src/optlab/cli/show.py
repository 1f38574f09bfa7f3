"""optlab show: the expanded run matrix, without running anything."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from optlab.cli.common import (
    BlockOption,
    OnlyOption,
    StoreOption,
    WhereOption,
    handles_errors,
    out,
)
from optlab.errors import UsageError
from optlab.execution.halving import rungs
from optlab.execution.selection import Selection, select
from optlab.states import State
from optlab.store import core as st
from optlab.study.expand import all_runs, expand
from optlab.study.schema import final_block, load_study

NAME = "show"
HELP = "Show a study's run matrix: per block and in total, how many runs, how many done."


@handles_errors
def command(
    study: Path = typer.Argument(
        None, help="Study file (TOML). Default: the quickstart.", show_default=False
    ),
    sets: list[str] = typer.Option([], "--set", help="Override a key: KEY=VALUE (repeatable)."),
    fmt: str = typer.Option("text", "--format", help="text, or json: one object per run."),
    max_runs: int = typer.Option(
        None,
        "--max-runs",
        envvar="OPTLAB_MAX_RUNS",
        help="Refuse a study that expands to more runs than this (default 100,000).",
        show_default=False,
    ),
    blocks: list[str] = BlockOption,
    only: list[str] = OnlyOption,
    where: str = WhereOption,
    store: Path = StoreOption,
) -> None:

    if fmt not in ("text", "json"):
        raise UsageError(f"--format {fmt!r}: use text or json")
    spec = load_study(study, sets)
    plans = expand(spec, max_runs=max_runs)
    matrix = sum(len(p.runs) for p in plans)
    chosen = Selection(blocks, only, where)
    plans = select(plans, chosen)
    states = _states(store, [r.run_id for r in all_runs(plans)])
    if fmt == "json":
        for run in all_runs(plans):
            out.print(
                json.dumps(
                    {
                        "run_id": run.run_id,
                        "study": run.study,
                        "block": run.block,
                        "seed": run.seed,
                        **run.axes,
                        "status": states.get(run.run_id, "new"),
                    }
                ),
                markup=False,
            )
        return
    total = sum(len(p.runs) for p in plans)
    done = sum(1 for s in states.values() if s == State.DONE)
    out.print(
        f"study {spec.name} ({spec.file}): {total} runs, {done} done in {store}", markup=False
    )
    if spec.description:
        out.print(f"  {spec.description}", markup=False)
    if chosen:
        out.print(f"  selected {total} of its {matrix} runs ({chosen.describe()})", markup=False)
    for plan in plans:
        bdone = sum(1 for r in plan.runs if states.get(r.run_id) == State.DONE)
        out.print(f"block {plan.name}: {len(plan.runs)} runs, {bdone} done", markup=False)
        # Of a part, the seeds and values its runs have (one pass over its runs).
        seen_seeds = {r.seed for r in plan.runs} if chosen else set(plan.seeds)
        seeds = [s for s in plan.seeds if s in seen_seeds]
        out.print(f"  seeds: {', '.join(map(str, seeds))}", markup=False)
        searched = set(plan.points[0]) if plan.points else set()
        for path, values in plan.axes.items():
            if path not in searched:
                if chosen:
                    present = {_key(r.axes.get(path)) for r in plan.runs}
                    values = [v for v in values if _key(v) in present]
                out.print(f"  {path}: {', '.join(_fmt(v) for v in values)}", markup=False)
        if plan.points:
            out.print(f"  search ({plan.search}): {len(plan.points)} points", markup=False)
            width = len(str(len(plan.points)))
            for i, point in enumerate(plan.points, 1):
                shown = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
                out.print(f"    {i:>{width}}. {shown}", markup=False)
        for line in tuning_lines(plan):
            out.print(f"  {line}", markup=False)


def tuning_lines(plan) -> list[str]:
    """How a block is halved and confirmed, in words."""
    lines = []
    stop, final = plan.early_stop, plan.final
    if stop is not None:
        epochs = max((r.config["epochs"] for r in plan.runs), default=0)
        at = rungs(stop.min_epochs, stop.reduction, epochs)
        within = f"within each {', '.join(stop.group_by)}" if stop.group_by else "within the block"
        lines.append(
            f"early stop ({stop.kind}): at epochs {', '.join(map(str, at)) or 'none'} the best "
            f"1/{stop.reduction} of the configurations on {stop.metric} ({stop.mode}) go on, "
            f"{within}"
        )
    if final is not None:
        lines.append(
            f"final: the best configuration on {final.select} runs again with "
            f"{final.seeds} fresh seeds, as block {final_block(plan.name)}"
        )
    return lines


def _key(value) -> tuple[str, str]:
    """A value as a set member that tells 1, 1.0 and true apart."""
    return type(value).__name__, json.dumps(value, sort_keys=True)


def _fmt(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _states(store: Path, run_ids: list[str]) -> dict[str, str]:
    if not store.exists():
        return {}

    with st.reading(store, require_runs=False) as con:
        has = con.execute(
            "select count(*) from information_schema.tables where table_name = 'run_state'"
        ).fetchone()[0]
        return st.states(con, run_ids) if has else {}
