"""Tune, then confirm: a block's ``final = { select = "val_acc", seeds = 10 }``.

Once every run of a group of the block has ended (done, stopped, diverged or failed), its
best configuration is chosen on ``select`` alone, never on a test metric: per run, its best
value over epochs; per configuration, the mean over its seeds; only configurations whose
every seed trained all its epochs compete (all of them, when none did); a configuration
with a diverged seed never wins; ties go to the smaller key. That configuration runs again
with ``seeds`` fresh seeds (the block's largest seed + 1, + 2, ...; the largest of the study
file's, when a part of it is run with ``--set seeds=...``) as the block
``NAME/final``, in the same `optlab run`. The group is what ``final.group_by`` names, else
the early stop's ``group_by``, else the whole block.
"""

from __future__ import annotations

import json
import math
from typing import Any

import duckdb

from optlab.execution.halving import group_of, unit_key
from optlab.states import ENDED, State
from optlab.study.expand import BlockPlan, RunSpec, run_id_for
from optlab.study.schema import final_block


def group_by(plan: BlockPlan) -> list[str]:
    if plan.final is not None and plan.final.group_by is not None:
        return plan.final.group_by
    return plan.early_stop.group_by if plan.early_stop is not None else []


def groups(plan: BlockPlan) -> dict[tuple, list[RunSpec]]:
    out: dict[tuple, list[RunSpec]] = {}
    for run in plan.runs:
        out.setdefault(group_of(plan.name, run.config, group_by(plan)), []).append(run)
    return out


def selected(
    con: duckdb.DuckDBPyConnection, plan: BlockPlan, only: set[tuple] | None = None
) -> list[RunSpec]:
    """The configurations chosen so far, one per group whose runs have all ended (of the
    groups ``only`` names, when given): one of each's runs (the lowest seed)."""
    final = plan.final
    if final is None or not plan.runs or seed_part(plan):
        return []
    chosen_groups = {k: v for k, v in groups(plan).items() if only is None or k in only}
    ids = [r.run_id for members in chosen_groups.values() for r in members]
    better = "max" if final.select.endswith("acc") else "min"
    rows = con.execute(
        f"select r.run_id, r.status, r.config->>'$.epochs', e.best, e.last "
        f"from run_state r left join (select run_id, {better}({final.select}) as best, "
        "max(epoch) as last from epochs where run_id in (select unnest($1::varchar[])) "
        "group by run_id) e using (run_id) where r.run_id in (select unnest($1::varchar[]))",
        [ids],
    ).fetchall()
    seen = {
        run_id: (status, int(epochs or 0), best, last)
        for run_id, status, epochs, best, last in rows
    }
    chosen = []
    for members in chosen_groups.values():
        if any(seen.get(r.run_id, (State.PENDING,))[0] not in ENDED for r in members):
            continue
        best = _best_unit(members, seen, better == "max")
        if best is not None:
            chosen.append(best)
    return chosen


def _best_unit(members: list[RunSpec], seen: dict[str, tuple], larger: bool) -> RunSpec | None:
    units: dict[str, list[RunSpec]] = {}
    for run in members:
        units.setdefault(unit_key(run.config), []).append(run)

    def full(runs: list[RunSpec]) -> bool:
        return all(
            seen[r.run_id][0] == State.DONE and seen[r.run_id][3] == seen[r.run_id][1] for r in runs
        )

    scored = []
    for key, runs in units.items():
        if any(seen[r.run_id][0] == State.DIVERGED for r in runs):
            continue
        values = [seen[r.run_id][2] for r in runs if seen[r.run_id][2] is not None]
        values = [v for v in values if math.isfinite(v)]
        if values:
            mean = sum(values) / len(values)
            scored.append((full(runs), mean if larger else -mean, key, runs))
    if not scored:
        return None
    pool = [s for s in scored if s[0]] or scored
    top = min(pool, key=lambda s: (-s[1], s[2]))
    return min(top[3], key=lambda r: r.seed)


def seed_part(plan: BlockPlan) -> bool:
    """Whether ``plan`` runs only some of its block's seeds in the study file (``--set
    seeds=...``): its final runs wait for the rest (the parts merged, then the whole file
    run), so that every part adds up to the one selection the whole file makes."""
    return bool(plan.file_seeds) and not set(plan.file_seeds) <= set(plan.seeds)


def final_plan(plan: BlockPlan, chosen: list[RunSpec]) -> BlockPlan | None:
    """The final runs of the chosen configurations: ``final.seeds`` fresh seeds each."""
    if plan.final is None or not chosen:
        return None
    first = max([*plan.seeds, *plan.file_seeds], default=-1) + 1
    seeds = list(range(first, first + plan.final.seeds))
    runs = []
    for i, pick in enumerate(chosen):
        for j, seed in enumerate(seeds):
            runs.append(
                RunSpec(
                    run_id_for(pick.config, seed),
                    pick.study,
                    final_block(plan.name),
                    seed,
                    pick.config,
                    pick.axes,
                    FINAL_POSITION + i * len(seeds) + j,
                    pick.folder,
                    pick.files,
                )
            )
    axes: dict[str, list[Any]] = {}
    for pick in chosen:
        for path, value in pick.axes.items():
            if value not in axes.setdefault(path, []):
                axes[path].append(value)
    return BlockPlan(final_block(plan.name), axes, seeds, runs)


def drop_replaced(
    con: duckdb.DuckDBPyConnection, study: str, plan: BlockPlan, final: BlockPlan
) -> None:
    """Final runs of a configuration no longer selected (its group's search changed: runs
    stopped before trained on) leave the study; their rows stay in the store."""
    chosen = {r.run_id for r in final.runs}
    ready = {group_of(plan.name, r.config, group_by(plan)) for r in final.runs}
    members = con.execute(
        "select m.run_id, r.config from memberships m join run_state r using (run_id) "
        "where m.study = ? and m.block = ?",
        [study, final.name],
    ).fetchall()
    gone = [
        run_id
        for run_id, config in members
        if run_id not in chosen and group_of(plan.name, json.loads(config), group_by(plan)) in ready
    ]
    if gone:
        con.execute(
            "delete from memberships where study = ? and run_id in (select unnest(?::varchar[]))",
            [study, gone],
        )


FINAL_POSITION = 1_000_000_000  # after every search run, in a study's order


def plans_with_finals(con: duckdb.DuckDBPyConnection, plans: list[BlockPlan]) -> list[BlockPlan]:
    """``plans`` and, after each block with ``final``, the final runs of its groups that
    are ready (their search is over)."""
    out = []
    for plan in plans:
        out.append(plan)
        extra = final_plan(plan, selected(con, plan))
        if extra is not None:
            out.append(extra)
    return out
