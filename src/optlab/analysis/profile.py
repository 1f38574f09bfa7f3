"""``profile``: time to a target per optimizer and workload, and the performance profiles
that score them across workloads (Dolan and More 2002; AlgoPerf's scoring, Dahl et al.
2023).

A workload is a dataset with a model, with every setting of either that differs between the
study's runs (two ``.npz`` files through ``arrays``, or ``mlp`` with ``hidden = [32]`` and
with ``hidden = []``, are two workloads, never pooled). A run's time to the target is the
step, the SFO (samples) or the seconds (training, evaluation and probes, summed) at the end
of the first epoch whose metric reaches the target (``--target val_acc=0.9``: at least
0.9; a loss: at most); a run that never does takes an infinite time. A configuration's
time is the median over its seeds; an optimizer's time on a workload is its best
configuration's (it is tuned): median, then best. AlgoPerf (Dahl et al. 2023) reduces the
other way, the best configuration per seed and then the median over seeds
(``--order best-then-median``), which credits an optimizer whose configurations each reach
the target on some seeds; the output states the order it followed. Its ratio on a
workload is its time over the fastest optimizer's there, and its profile rho(tau) is the
fraction of workloads on which that ratio is at most tau.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from optlab.analysis.core import (
    Asked,
    Result,
    Run,
    flat_config,
    groups,
    in_study_order,
    leave_out,
)
from optlab.analysis.results import METRIC_COLUMNS
from optlab.errors import OptlabError
from optlab.states import State
from optlab.store.sql import q

TIMES = {"steps": "step", "sfo": "sfo", "seconds": "seconds"}
ORDERS = {
    "median-then-best": "a configuration's time is the median over its seeds, then an "
    "optimizer's is its best configuration's (median, then best)",
    "best-then-median": "for each seed, an optimizer's time is its best configuration's, then "
    "its time is the median over seeds (best, then median: AlgoPerf's order, Dahl et al. 2023)",
}


def parse_target(target: str | None) -> tuple[str, float]:
    """``val_acc=0.9`` -> ("val_acc", 0.9), or one line saying what is allowed."""
    column, eq, value = (target or "").partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not eq or column.strip() not in METRIC_COLUMNS or math.isnan(number):
        raise OptlabError(
            f"analyze profile: --target {target!r}: give COLUMN=VALUE, such as val_acc=0.9, "
            f"with COLUMN one of {', '.join(METRIC_COLUMNS)}"
        )
    return column.strip(), number


def read(con: Any, result: Result, asked: Asked) -> list[Run]:
    """Each run with its time to the target as its value (None: never reached)."""
    column, target = parse_target(asked.target)
    unit = asked.time or "steps"
    if unit not in TIMES:
        raise OptlabError(f"analyze profile: --time {unit!r}: use steps, sfo or seconds")
    order = asked.order or "median-then-best"
    if order not in ORDERS:
        raise OptlabError(f"analyze profile: --order {order!r}: use {' or '.join(ORDERS)}")
    asked.found["order"] = order
    rows = con.execute(times_sql(result.study, column, target, unit)).fetchall()
    asked.found.update(column=column, target=target, unit=unit)
    return in_study_order(
        [
            Run(run_id, seed, status, flat_config(config), t, position, block)
            for run_id, seed, status, config, position, block, t in rows
        ]
    )


def times_sql(study: str, column: str, target: float, unit: str) -> str:
    """Each run of the study with the time at the end of its first epoch that reaches the
    target (null: none did), as one statement `optlab query` runs as it is."""
    reached = (
        f"e.{column} >= {target!r}" if column.endswith("_acc") else f"e.{column} <= {target!r}"
    )
    clock = (
        "sum(e.seconds + coalesce(e.eval_seconds, 0) + coalesce(e.probe_seconds, 0)) "
        "over (partition by e.run_id order by e.epoch)"
        if unit == "seconds"
        else f"e.{TIMES[unit]}"
    )
    return f"""with timed as (
  select e.run_id, e.epoch, {clock} as t, {reached} as hit from epochs e
)
select r.run_id, r.seed, r.status, r.config, r.position, r.block,
       (select t from timed where timed.run_id = r.run_id and hit order by epoch limit 1)
         as time_to_target
from runs r where r.study = '{q(study)}' order by r.position, r.run_id"""


def answer(result: Result, runs: list[Run], axes: Any, rng: Any, asked: Asked) -> None:
    column, target, unit = (asked.found[k] for k in ("column", "target", "unit"))
    done = [r for r in runs if r.status == State.DONE]
    for status in sorted({r.status for r in runs} - {State.DONE}):
        leave_out(result, status, [r for r in runs if r.status == status])
    times = _times(done, runs, asked.found["order"])
    optimizers = sorted({o for _, o in times})
    workloads = sorted({w for w, _ in times})
    if len(optimizers) < 2:
        result.findings["note"] = (
            f"not answerable yet: finished runs of {len(optimizers)} optimizer(s); a "
            "profile compares two or more"
        )
        result.tables["profile"] = []
        return
    ratios = _ratios(times, workloads, optimizers)
    result.tables["times"] = [
        {
            "workload": w,
            "optimizer": o,
            f"{unit}_to_target": _finite(times.get((w, o), math.inf)),
            "ratio": _finite(ratios[w, o]),
        }
        for w in workloads
        for o in optimizers
    ]
    result.tables["profile"] = _profile(ratios, workloads, optimizers)
    result.findings.update(
        question=f"{unit} to reach {column} {'>=' if column.endswith('_acc') else '<='} "
        f"{target:g} per optimizer and workload (dataset x model, each setting of either that "
        "differs between runs making another workload), and the fraction of "
        "workloads on which each is within a factor tau of the fastest",
        rule=ORDERS[asked.found["order"]]
        + "; never reached: infinite, and so is its ratio; "
        + "the other order, "
        + next(o for o in ORDERS if o != asked.found["order"])
        + ", is --order "
        + next(o for o in ORDERS if o != asked.found["order"]),
    )
    if not any(math.isfinite(r) for r in ratios.values()):
        result.findings["note"] = (
            f"no run reached {column} {'>=' if column.endswith('_acc') else '<='} {target:g}: "
            "every time is infinite, and every optimizer's fraction of workloads is 0 at "
            "every tau"
        )


def workload_of(runs: list[Run]) -> Any:
    """A run's workload: its dataset and its model, each named with the settings that differ
    between ``runs`` of the same plugin (``arrays path="b.npz" x mlp hidden=[32]``)."""
    differ: dict[tuple[str, str], list[str]] = {}  # (slot, plugin) -> settings that differ
    for slot in ("dataset", "model"):
        by_plugin: dict[str, list[Run]] = {}
        for r in runs:
            by_plugin.setdefault(str(r.get(slot)), []).append(r)
        for plugin, members in by_plugin.items():
            keys = sorted({k for r in members for k in r.config if k.startswith(slot + ".")})
            differ[slot, plugin] = [
                k
                for k in keys
                if len({json.dumps(r.get(k), sort_keys=True, default=str) for r in members}) > 1
            ]

    def name(run: Run) -> str:
        parts = []
        for slot in ("dataset", "model"):
            plugin = str(run.get(slot))
            settings = [
                f"{k.partition('.')[2]}={json.dumps(run.get(k), default=str)}"
                for k in differ[slot, plugin]
            ]
            parts.append(" ".join([plugin, *settings]))
        return " x ".join(parts)

    return name


def _times(done: list[Run], runs: list[Run], order: str) -> dict[tuple[str, str], float]:
    """(workload, optimizer) -> its time: the best configuration's median over seeds, or
    (``best-then-median``) the median over seeds of each seed's best configuration."""
    workload = workload_of(runs)
    if order == "best-then-median":
        per_seed: dict[tuple[str, str], dict[int, float]] = {}
        for r in done:
            seeds = per_seed.setdefault((workload(r), str(r.get("optimizer"))), {})
            seeds[r.seed] = min(seeds.get(r.seed, math.inf), _time(r))
        return {key: statistics.median(seeds.values()) for key, seeds in per_seed.items()}
    best: dict[tuple[str, str], float] = {}
    for _, members in groups(done, [], among=runs).items():
        first = members[0]
        key = (workload(first), str(first.get("optimizer")))
        median = statistics.median(_time(r) for r in members)
        best[key] = min(best.get(key, math.inf), median)
    return best


def _time(run: Run) -> float:
    return math.inf if run.value is None else run.value


def _ratios(times: dict, workloads: list[str], optimizers: list[str]) -> dict:
    ratios = {}
    for w in workloads:
        fastest = min(times.get((w, o), math.inf) for o in optimizers)
        for o in optimizers:
            t = times.get((w, o), math.inf)
            ratios[w, o] = t / fastest if math.isfinite(fastest) and fastest > 0 else math.inf
            if math.isfinite(fastest) and fastest == 0:
                ratios[w, o] = 1.0 if t == 0 else math.inf
    return ratios


def _profile(ratios: dict, workloads: list[str], optimizers: list[str]) -> list[dict]:
    """rho(tau) of each optimizer at every tau where some profile steps up."""
    # No run reached the target: every ratio is infinite, every fraction 0 (drawn at tau 1).
    taus = sorted({r for r in ratios.values() if math.isfinite(r)}) or [1.0]
    return [
        {
            "optimizer": o,
            "tau": tau,
            "fraction": sum(ratios[w, o] <= tau for w in workloads) / len(workloads),
        }
        for o in optimizers
        for tau in taus
    ]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
