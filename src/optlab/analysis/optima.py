"""``optimal`` (a hyperparameter's best value per group) and ``ranking`` (optimizers ranked
by their best cell, with the significance of each gap)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from optlab.analysis.core import (
    ALPHA,
    LR,
    Asked,
    Result,
    Run,
    groups,
    higher_is_better,
    load,
    not_yet,
    numeric_axes,
    optimum,
    usable,
)
from optlab.analysis.results import Axes, parse_metric, reduce_sql, validation_counterpart
from optlab.errors import OptlabError


def read_selecting(con: Any, result: Result, asked: Asked) -> list[Run]:
    """Each run valued by what selection reads. For a test ``--metric`` of a study with a
    validation split that is its validation counterpart (``best_val_acc`` for
    ``best_test_acc``), and the test metric is kept (``found["test"]``) to be reported for
    what validation selected; without a split, the metric itself, and the output says the
    choice was made on test."""
    runs = load(con, result.study, result.metric)
    counterpart = validation_counterpart(result.metric)
    asked.found["selection"] = None
    if counterpart is not None:
        values = _values(con, result.study, counterpart)
        if any(v is not None for v in values.values()):
            asked.found["selection"] = counterpart
            asked.found["test"] = {r.run_id: r.value for r in runs}
            return [replace(r, value=values.get(r.run_id)) for r in runs]
    return runs


def _values(con: Any, study: str, metric: str) -> dict[str, float | None]:
    """Each run's reduced ``metric`` alone (its config is read once, by :func:`load`)."""
    rows = con.execute(
        f"select r.run_id, {reduce_sql(*parse_metric(metric))} from runs r "
        "left join epochs e using (run_id) where r.study = ? group by r.run_id",
        [study],
    ).fetchall()
    return {
        run_id: None if value is None or not math.isfinite(value) else float(value)
        for run_id, value in rows
    }


def selection_rule(result: Result, asked: Asked, chosen: str) -> str:
    """The rule the output follows, in words."""
    val = asked.found.get("selection")
    if val is not None:
        return (
            f"{chosen} chosen on {val} (the validation split), and {result.metric} reported "
            "for what it chose: the test set never chooses"
        )
    if validation_counterpart(result.metric) is not None:
        return (
            f"{chosen} chosen on {result.metric}: the study has no validation split, so the "
            "test set both chooses and reports (an optimistic estimate)"
        )
    return f"{chosen} chosen on {result.metric}"


def _test_mean(members: list[Run], asked: Asked) -> float | None:
    """The mean test metric of runs selection picked (None without a validation split)."""
    tests = asked.found.get("test")
    if tests is None:
        return None
    values = [tests[r.run_id] for r in members if tests.get(r.run_id) is not None]
    return float(np.mean(values)) if values else None


def optimal(result: Result, runs: list[Run], axes: list[str], rng: Any, asked: Asked) -> None:
    """The best value of ``--param`` (default the LR) per group, with its bootstrap interval;
    ranked points instead where each group tried one value (a search)."""
    param = asked.param
    numeric = numeric_axes(axes)
    param = param or (LR if LR in axes else (numeric[0] if numeric else None))
    varies = ", ".join(axes) or "nothing (one configuration, seeds apart)"
    if param is None:
        raise OptlabError(
            f"analyze optimal: study {result.study!r} varies no numeric hyperparameter to find "
            f"the best value of; it varies {varies}"
        )
    if param not in axes:
        raise OptlabError(f"--param {param}: the study does not vary it; it varies {varies}")
    higher = higher_is_better(result.metric)
    rows = []
    kept = usable(runs, result)
    val = asked.found.get("selection")
    for label, members in groups(kept, [param], among=runs).items():
        row = {"group": label, "param": param, **optimum(members, param, higher, rng)}
        if val is not None:
            row[f"{val}_mean"] = row.pop("metric_mean")
            at = [
                r for r in members if row["optimum"] is not None and r.get(param) == row["optimum"]
            ]
            row[f"{result.metric}_at_optimum"] = _test_mean(at, asked)
        rows.append(row)
    not_yet(result, kept, runs, [param])
    result.tables["optimal"] = rows
    result.findings["param"] = param
    result.findings["selection"] = selection_rule(result, asked, f"each group's best {param}")
    if len(rows) > 1 and all(r["optimum"] is None for r in rows):
        # Every group tried one value (a random search draws one point a cell): no optimum
        # of the parameter alone; the drawn points ranked by their mean over seeds instead.
        result.tables["ranked_points"] = _ranked_points(kept, higher, runs, result, asked)
        result.findings["note"] = (
            f"each group tried one value of {param} (points of a search, say): no optimum of "
            f"{param} alone; ranked_points ranks the points by their mean over seeds"
        )
        result.findings["selection"] = selection_rule(result, asked, "the points' order")


def _ranked_points(
    runs: list[Run], higher: bool, among: list[Run], result: Result, asked: Asked
) -> list[dict[str, Any]]:
    """Each configuration (a point; its seeds pooled) by its mean of what selection reads,
    best first; with a validation split, its mean test metric beside it."""
    val = asked.found.get("selection")
    points = []
    for label, members in groups(runs, [], among).items():
        point = {
            "point": label,
            "mean": float(np.mean([r.value for r in members])),
            "std": float(np.std([r.value for r in members], ddof=1)) if len(members) > 1 else None,
            "seeds": len(members),
        }
        if val is not None:
            point[f"{val}_mean"] = point.pop("mean")
            point[f"{result.metric}_mean"] = _test_mean(members, asked)
        points.append(point)
    key = f"{val}_mean" if val is not None else "mean"
    points.sort(key=lambda p: (-p[key] if higher else p[key], p["point"]))
    for rank, point in enumerate(points, 1):
        point["rank"] = rank
    return points


def ranking(result: Result, runs: list[Run], axes: list[str], rng: Any, asked: Asked) -> None:
    """Optimizers ranked by their best cell, each gap tested (Welch, BH-adjusted)."""
    from scipy import stats  # scipy: a second to import, so only when a test is run

    kept = usable(runs, result)

    def name_of(run: Run) -> str:
        # Whole optimizer tables that share a plugin (sgd with and without momentum) are
        # different optimizers: named by what differs between them.
        if isinstance(axes, Axes) and axes.varied("optimizer"):
            return axes.label("optimizer", run.get)
        return str(run.get("optimizer"))

    names = sorted({name_of(r) for r in kept})
    if len({name_of(r) for r in runs}) < 2 and result.matrix is not None:
        # A study run in parts: the other optimizers' runs are not in the store yet.
        result.tables["ranking"] = []
        result.findings["note"] = (
            f"not answerable yet: only {', '.join(names) or 'no optimizer'} has runs here, "
            f"{len(runs)} of the study file's {result.matrix}; run the rest of it"
        )
        return
    if len({name_of(r) for r in runs}) < 2:
        raise OptlabError(
            f"analyze ranking: needs the study to use two or more optimizers; "
            f"study {result.study!r} uses {', '.join(names) or 'none'}"
        )
    waiting = sorted({name_of(r) for r in runs} - set(names))
    if waiting and names:
        result.findings["not_yet"] = "no finished runs yet of " + ", ".join(
            f"{n} ({sum(name_of(r) == n for r in runs)} runs)" for n in waiting
        )
    higher = higher_is_better(result.metric)
    val, tests = asked.found.get("selection"), asked.found.get("test") or {}
    best: list[dict[str, Any]] = []
    for name in names:
        mine = [r for r in runs if name_of(r) == name]
        cells = groups([r for r in kept if name_of(r) == name], [], among=mine)
        scored = [
            (float(np.mean([r.value for r in members])), label, members)
            for label, members in sorted(cells.items())
        ]
        chosen_by, label, members = (max if higher else min)(scored, key=lambda x: x[0])
        # The best cell is chosen on validation where there is one; the optimizers are
        # then ranked and tested on the test metric of the cells chosen.
        values = (
            [tests[r.run_id] for r in members if tests.get(r.run_id) is not None]
            if val is not None
            else [r.value for r in members]
        )
        row = {"optimizer": name, "best_cell": label}
        if val is not None:
            row[f"{val}_mean"] = chosen_by
        row.update(
            mean=float(np.mean(values)) if values else None,
            std=float(np.std(values, ddof=1)) if len(values) > 1 else None,
            seeds=len(values),
            _values=values,
        )
        best.append(row)
    worst = -math.inf if higher else math.inf
    best.sort(key=lambda row: worst if row["mean"] is None else row["mean"], reverse=higher)
    raw = []
    for i, row in enumerate(best):
        row["rank"] = i + 1
        if i == 0:
            row["p_vs_next_better"] = None
            continue
        a, b = best[i - 1]["_values"], row["_values"]
        if len(a) < 2 or len(b) < 2:
            row["p_vs_next_better"] = None
            continue
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        row["p_vs_next_better"] = p
        raw.append((i, p))
    if raw:
        adjusted = stats.false_discovery_control([p for _, p in raw])
        for (i, _), q in zip(raw, adjusted, strict=True):
            best[i]["q_vs_next_better"] = float(q)
    for row in best:
        row.pop("_values")
        row.setdefault("q_vs_next_better", None)
        row["significant"] = (
            None if row["q_vs_next_better"] is None else bool(row["q_vs_next_better"] < ALPHA)
        )
    result.tables["ranking"] = best
    result.findings["selection"] = selection_rule(result, asked, "each optimizer's best cell")
    result.findings["test"] = (
        "Welch t-test between each optimizer's best cell and the next "
        "better one over seeds, Benjamini-Hochberg adjusted (q)"
    )
