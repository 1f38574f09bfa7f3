"""``optimal`` (a hyperparameter's best value per group) and ``ranking`` (optimizers ranked
by their best cell, with the significance of each gap)."""

from __future__ import annotations

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
    not_yet,
    numeric_axes,
    optimum,
    usable,
)
from optlab.analysis.results import Axes
from optlab.errors import OptlabError


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
    for label, members in groups(kept, [param], among=runs).items():
        rows.append({"group": label, "param": param, **optimum(members, param, higher, rng)})
    not_yet(result, kept, runs, [param])
    result.tables["optimal"] = rows
    result.findings["param"] = param
    if len(rows) > 1 and all(r["optimum"] is None for r in rows):
        # Every group tried one value (a random search draws one point a cell): no optimum
        # of the parameter alone; the drawn points ranked by their mean over seeds instead.
        result.tables["ranked_points"] = _ranked_points(kept, higher, runs)
        result.findings["note"] = (
            f"each group tried one value of {param} (points of a search, say): no optimum of "
            f"{param} alone; ranked_points ranks the points by their mean over seeds"
        )


def _ranked_points(runs: list[Run], higher: bool, among: list[Run]) -> list[dict[str, Any]]:
    """Each configuration (a point; its seeds pooled) by its mean metric, best first."""
    points = [
        {
            "point": label,
            "mean": float(np.mean([r.value for r in members])),
            "std": float(np.std([r.value for r in members], ddof=1)) if len(members) > 1 else None,
            "seeds": len(members),
        }
        for label, members in groups(runs, [], among).items()
    ]
    points.sort(key=lambda p: (-p["mean"] if higher else p["mean"], p["point"]))
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
    best: list[dict[str, Any]] = []
    for name in names:
        mine = [r for r in runs if name_of(r) == name]
        cells = groups([r for r in kept if name_of(r) == name], [], among=mine)
        scored = [
            (float(np.mean([r.value for r in members])), label, members)
            for label, members in cells.items()
        ]
        mean, label, members = (max if higher else min)(scored, key=lambda x: x[0])
        values = [r.value for r in members]
        best.append(
            {
                "optimizer": name,
                "best_cell": label,
                "mean": mean,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "seeds": len(values),
                "_values": values,
            }
        )
    best.sort(key=lambda row: row["mean"], reverse=higher)
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
    result.findings["test"] = (
        "Welch t-test between each optimizer's best cell and the next "
        "better one over seeds, Benjamini-Hochberg adjusted (q)"
    )
