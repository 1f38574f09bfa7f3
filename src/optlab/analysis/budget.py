"""``budget``: how good each optimizer gets for a tuning budget of k trials (Dodge et al.
2019, "Show Your Work"), and which wins at which budget.

A group's trials are its finished runs (every point of its search space, every seed), a
run that successive halving stopped with the values it reached before it stopped, and a
run that diverged with what it reached before diverging (its metric over the epochs it
recorded): a diverged run was a trial, and leaving it out flatters a space that diverges. For
k trials drawn from them at random (with replacement, as Dodge et al.'s estimator does),
the expected best validation metric and its spread follow exactly from the order
statistics: with the runs ranked 1..n by validation, the best of k is the run ranked i with
probability (i/n)^k - ((i-1)/n)^k. The test metric reported for a budget is that of the run
validation selects, under the same probabilities: selection never reads the test metric.
Runs tied on validation are one outcome for selection, so they share its chance equally:
each stands for the mean test metric of its tie (no run id, no store order decides).

``--metric`` names the test metric reported (default ``best_test_acc``); the selection
reads its validation counterpart (``best_val_acc``).
"""

from __future__ import annotations

import math
from typing import Any

from optlab.analysis.core import (
    Asked,
    Result,
    Run,
    compared_by,
    higher_is_better,
    in_study_order,
    leave_out,
    load,
    pooled_blocks,
    test_epoch_caution,
)
from optlab.analysis.results import validation_counterpart
from optlab.errors import OptlabError
from optlab.states import State
from optlab.study.schema import is_final_block

TRIALS = (State.DONE, State.STOPPED, State.DIVERGED)


def validation_metric(metric: str) -> str:
    """``best_test_acc`` -> ``best_val_acc``: what selection reads for a test metric."""
    counterpart = validation_counterpart(metric)
    if counterpart is None:
        raise OptlabError(
            f"analyze budget: --metric {metric}: give a test metric (such as best_test_acc); "
            "the selection reads its validation counterpart"
        )
    return counterpart


def read(con: Any, result: Result, asked: Asked) -> list[Run]:
    """Each run with its validation metric as its value; its test metric in ``found``."""
    val = validation_metric(result.metric)
    runs = load(con, result.study, val)
    asked.found["test"] = {r.run_id: r.value for r in load(con, result.study, result.metric)}
    asked.found["validation"] = val
    return runs


def expected_best(values: list[float], tests: list[float], k: int) -> tuple[float, float, float]:
    """For runs ranked worst to best (``values`` ascending in goodness), the expected best
    value of ``k`` draws with replacement, its standard deviation, and the expected test
    value of the run that best one is."""
    n = len(values)
    mean = square = test = 0.0
    for i, (v, t) in enumerate(zip(values, tests, strict=True), start=1):
        p = (i / n) ** k - ((i - 1) / n) ** k
        mean += p * v
        square += p * v * v
        test += p * t
    return mean, math.sqrt(max(0.0, square - mean * mean)), test


def answer(result: Result, runs: list[Run], axes: Any, rng: Any, asked: Asked) -> None:
    by, name_of = compared_by("budget", axes, asked.by)
    higher = higher_is_better(asked.found["validation"])
    tests = asked.found["test"]
    groups = _trials(result, runs, name_of, tests, asked.found["validation"])
    if len(groups) < 2:
        result.findings["note"] = (
            f"not answerable yet: finished runs of {len(groups)} {by} value(s) "
            f"({', '.join(groups) or 'none'}); a budget compares two or more"
        )
        result.tables["budget"] = []
        return
    curves = {}
    rows = []
    for name, members in groups.items():
        # worst to best: the best of k is the highest rank drawn
        ranked = sorted(members, key=lambda r: r.value if higher else -r.value)
        values = [r.value for r in ranked]
        tested = tie_shared(values, [tests[r.run_id] for r in ranked])
        curves[name] = []
        for k in range(1, len(ranked) + 1):
            mean, std, test = expected_best(values, tested, k)
            curves[name].append(mean)
            rows.append(
                {
                    by: name,
                    "k": k,
                    f"expected_best_{asked.found['validation']}": mean,
                    "std": std,
                    f"{result.metric}_of_selected": test,
                }
            )
    result.tables["budget"] = rows
    result.findings.update(
        question=f"the expected {asked.found['validation']} of the best of k trials drawn "
        f"from each {by}'s finished runs, and the {result.metric} of the run it selects",
        trials=f"each {by}'s trials are all its finished runs (every point of its search "
        "space and every seed), drawn with replacement (Dodge et al. 2019)"
        + (
            "; runs stopped early by successive halving count with the values they reached"
            if any(r.status == State.STOPPED for g in groups.values() for r in g)
            else ""
        )
        + _diverged(groups, asked.found["validation"], by),
        budget=_leaders(curves, higher, by),
    )
    pooled = pooled_blocks(groups)
    if pooled:
        result.findings["pooled"] = f"{pooled}: each {by}'s trials are its runs in every block"
    caution = test_epoch_caution(result.metric, "selected run")
    if caution:
        result.findings["caution"] = caution


def tie_shared(values: list[float], tests: list[float]) -> list[float]:
    """``tests`` with each run tied on ``values`` (sorted) given its tie's mean test value:
    selection cannot tell tied runs apart, so none of them is the one it picks."""
    out, start = list(tests), 0
    for end in range(1, len(values) + 1):
        if end == len(values) or values[end] != values[start]:
            if end - start > 1:
                shared = math.fsum(tests[start:end]) / (end - start)  # order-free sum
                out[start:end] = [shared] * (end - start)
            start = end
    return out


def _trials(
    result: Result, runs: list[Run], name_of: Any, tests: dict, val: str
) -> dict[str, list[Run]]:
    finals = [r for r in runs if is_final_block(r.block)]
    leave_out(result, "final run (a confirmation, not a trial)", finals)
    runs = [r for r in runs if not is_final_block(r.block)]
    # A run successive halving stopped is a trial too, and so is one that diverged: leaving
    # it out would make a search space that diverges often look better than it is. Each
    # counts with what it reached (its metric over the epochs it recorded).
    finished = [r for r in in_study_order(runs) if r.status in TRIALS]
    for status in sorted({r.status for r in runs} - set(TRIALS)):
        leave_out(result, status, [r for r in runs if r.status == status])
    leave_out(result, f"no {val} value", [r for r in finished if r.value is None])
    leave_out(
        result,
        f"no {result.metric} value",
        [r for r in finished if r.value is not None and tests.get(r.run_id) is None],
    )
    kept = [r for r in finished if r.value is not None and tests.get(r.run_id) is not None]
    groups: dict[str, list[Run]] = {}
    for run in kept:
        groups.setdefault(name_of(run), []).append(run)
    return dict(sorted(groups.items()))


def _diverged(groups: dict[str, list[Run]], val: str, by: str) -> str:
    """How many trials diverged, per group, and the value they count with."""
    counts = {
        name: sum(r.status == State.DIVERGED for r in members) for name, members in groups.items()
    }
    if not any(counts.values()):
        return "; no trial diverged"
    each = ", ".join(f"{name} {n} of {len(groups[name])}" for name, n in counts.items())
    return (
        f"; diverged runs are trials too ({each}), each counted with what it reached before "
        f"diverging: its {val} over the epochs it recorded"
    )


def _leaders(curves: dict[str, list[float]], higher: bool, by: str) -> str:
    """Which group leads at each budget, up to the fewest trials any group has: "adamw
    wins below 8 trials, sgd from 8 on"."""
    most = min(len(c) for c in curves.values())
    leaders = []
    for k in range(most):
        scores = {name: c[k] for name, c in curves.items()}
        best = (max if higher else min)(scores.values())
        tied = sorted(n for n, s in scores.items() if math.isclose(s, best, rel_tol=1e-12))
        leaders.append(" and ".join(tied))
    spans: list[tuple[str, int, int]] = []
    for k, leader in enumerate(leaders, start=1):
        if spans and spans[-1][0] == leader:
            spans[-1] = (leader, spans[-1][1], k)
        else:
            spans.append((leader, k, k))
    if len(spans) == 1:
        return f"{spans[0][0]} wins at every budget from 1 to {most} trials"
    parts = []
    for i, (leader, first, last) in enumerate(spans):
        if i == 0:
            parts.append(f"{leader} wins below {last + 1} trials")
        elif i == len(spans) - 1:
            parts.append(f"{leader} from {first} on")
        else:
            parts.append(f"{leader} from {first} to {last}")
    return ", ".join(parts) + f" (compared up to {most} trials, the fewest any {by} has)"
