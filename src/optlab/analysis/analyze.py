"""Named analyses of a study, from the store: the seed projects' questions with statistics.

Every analysis reads one row per run (the run's reduced metric, its seed and its resolved
config) with a single SQL query, then works on those few rows with numpy and scipy.

- ``optimal``: the best value of a hyperparameter per group, with a bootstrap interval over
  seeds.
- ``lr-wd``: slope of log optimal LR against log WD (seed 001: inverse relationship, -1).
- ``scaling``: slope of log optimal LR against log batch size (linear scaling rule: 1).
- ``warmup``: optimal warmup per data regime, a fitted rule, and seed 002's H1-H4.
- ``sfo``: SFO (samples) to reach a full gradient norm below epsilon, per schedule (seed 004).
- ``ranking``: optimizers ranked by their best cell, with the significance of each gap.

A group is a set of runs whose configs agree on everything but the seed and the axes an
analysis looks across. Runs that did not finish (failed, diverged, pending, interrupted)
are left out, and each result says which and why.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from optlab.analysis import slopes, warmup
from optlab.analysis.core import (
    ALPHA,
    LR,
    Result,
    Run,
    flat_config,
    groups,
    higher_is_better,
    in_study_order,
    leave_out,
    load,
    not_yet,
    optimum,
    usable,
)
from optlab.analysis.results import Axes, open_study, parse_metric
from optlab.errors import OptlabError

ANALYSES = ("optimal", "lr-wd", "scaling", "warmup", "sfo", "ranking")


def run_analysis(
    store: Path,
    name: str,
    study: str | None,
    metric: str,
    param: str | None = None,
    epsilon: float | None = None,
    seed: int = 0,
) -> Result:
    if name not in ANALYSES:
        raise OptlabError(f"analysis {name!r}: not an analysis; use one of {', '.join(ANALYSES)}")
    parse_metric(metric)
    with open_study(store, study) as (con, study, axes):
        result = Result(name, study, metric)
        rng = np.random.default_rng(seed)
        if name == "sfo":
            _sfo(con, result, axes, epsilon)
            (count,) = con.execute("select count(*) from runs where study = ?", [study]).fetchone()
            _note_part(result, _matrix_size(con, study, count), count)
            return result
        runs = load(con, study, metric)
        result.matrix = _matrix_size(con, study, len(runs))
        if name == "warmup":
            from optlab.analysis.warmup import settings

            param = settings(con, study)
    if not runs:
        raise OptlabError(f"study {study!r} has no runs in {store}")
    runs = in_study_order(runs)
    handler = {
        "optimal": _optimal,
        "lr-wd": _lr_wd,
        "scaling": _scaling,
        "warmup": _warmup,
        "ranking": _ranking,
    }[name]
    with warnings.catch_warnings():
        # scipy warns on identical samples (a zero-variance cell); the p-value says enough.
        warnings.simplefilter("ignore", RuntimeWarning)
        handler(result, runs, axes, rng, param)
    _note_unfinished(result, [r.status for r in runs])
    _note_part(result, result.matrix, len(runs))
    return result


def _note_unfinished(result: Result, statuses: list[str]) -> None:
    """Say so when no run of the study has finished: every table is empty, and why."""
    if "done" in statuses or "note" in result.findings:
        return
    counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(statuses).items()))
    waiting = {"pending", "running", "interrupted"} & set(statuses)
    result.findings["note"] = (
        f"not answerable yet: none of the {len(statuses)} runs in this store has finished "
        f"({counts}); run them"
        if waiting
        else f"not answerable: none of the {len(statuses)} runs finished ({counts})"
    )


def _note_part(result: Result, matrix: int | None, runs: int) -> None:
    """Say so when the store holds only a part of the study file's runs."""
    if matrix is not None and "note" not in result.findings:
        result.findings["partial"] = (
            f"{runs} of the study file's {matrix} runs are in this store (a study run in "
            "parts): this answer covers those"
        )


def _matrix_size(con: Any, study: str, runs: int) -> int | None:
    """The study file's run count when fewer of its runs are in the store (a study run in
    parts); None otherwise."""
    from optlab.store.core import matrix_runs

    size = matrix_runs(con, study)
    return size if size is not None and size > runs else None


def _optimal(result: Result, runs: list[Run], axes: list[str], rng, param: str | None) -> None:
    numeric = [a for a in axes if a != "optimizer" and not a.endswith(".name")]
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


def _lr_wd(result: Result, runs: list[Run], axes: list[str], rng, _param: Any) -> None:

    slopes.lr_wd(result, runs, axes, rng)


def _scaling(result: Result, runs: list[Run], axes: list[str], rng, _param: Any) -> None:

    slopes.scaling(result, runs, axes, rng)


def _warmup(result: Result, runs: list[Run], axes: list[str], rng, opts: Any) -> None:

    warmup.analyze(result, runs, axes, rng, opts)


def _ranking(result: Result, runs: list[Run], axes: list[str], rng, _param: Any) -> None:
    from scipy import stats

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


def _sfo(con: Any, result: Result, axes: list[str], epsilon: float | None) -> Result:
    from optlab.analysis.results import probes_asked

    probed = con.execute(
        "select count(*) from probes p join memberships m using (run_id) where m.study = ? "
        "and p.probe = 'full_grad_norm'",
        [result.study],
    ).fetchone()[0]
    asking, finished = probes_asked(con, result.study).get("full_grad_norm", (0, 0))
    if not probed and asking:  # a study run in parts: its probed runs are not done yet
        result.tables["sfo"] = []
        result.findings["note"] = (
            f"not answerable yet: no full_grad_norm values so far ({finished} of the "
            f"{asking} runs that probe it finished); run the rest of it"
        )
        return result
    if epsilon is None or not epsilon > 0:
        raise OptlabError(
            "analyze sfo: give --epsilon, the full gradient norm to reach (a positive number)"
        )
    if not probed:
        raise OptlabError(
            f"analyze sfo: study {result.study!r} has no full_grad_norm probe values; add "
            'probes = [{ name = "full_grad_norm", every = 1 }] to its base'
        )
    rows = con.execute(
        "select g.run_id, g.seed, g.status, g.sfo, g.epoch, g.min_grad_norm, r.config "
        "from reach_grad_norm(?) g join runs r using (study, run_id) where g.study = ?",
        [epsilon, result.study],
    ).fetchall()
    runs = in_study_order(
        [
            Run(rid, seed, status, flat_config(cfg), sfo)
            for rid, seed, status, sfo, _, _, cfg in rows
        ]
    )
    minimum = {rid: mn for rid, _, _, _, _, mn, _ in rows}
    done = [r for r in runs if r.status == "done"]
    for status in sorted({r.status for r in runs} - {"done"}):
        leave_out(result, status, [r for r in runs if r.status == status])
    from scipy import stats

    table = []
    not_yet(result, done, runs, [])
    for label, members in groups(done, [], among=runs).items():
        reached = [r.value for r in members if r.value is not None]
        row = {
            "schedule": label,
            "runs": len(members),
            "reached": len(reached),
            "sfo_mean": float(np.mean(reached)) if reached else None,
            "sfo_std": float(np.std(reached, ddof=1)) if len(reached) > 1 else None,
            "sfo_ci95": (
                float(
                    stats.t.ppf(0.975, len(reached) - 1)
                    * np.std(reached, ddof=1)
                    / math.sqrt(len(reached))
                )
                if len(reached) > 1
                else None
            ),
            "lowest_grad_norm": min(
                (minimum[r.run_id] for r in members if minimum[r.run_id] is not None), default=None
            ),
        }
        table.append(row)
        leave_out(
            result,
            f"never reached epsilon = {epsilon:g} ({label})",
            [r for r in members if r.value is None],
        )
    table.sort(key=lambda row: (row["sfo_mean"] is None, row["sfo_mean"] or 0))
    result.tables["sfo"] = table
    result.findings.update(
        epsilon=epsilon,
        question="samples (SFO) to reach a full gradient "
        "norm at most epsilon, mean over the seeds that reached it",
    )
    return result
