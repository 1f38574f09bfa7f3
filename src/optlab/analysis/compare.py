"""``compare``: the confirmed comparison of a study that tunes, then confirms (a block's
``final = { select, seeds }``).

For each optimizer (or ``--by`` axis value): its final runs' ``--metric`` (the selected
configuration trained again with fresh seeds), their mean with a 95% Student-t interval,
and the tuning budget it received (configurations and runs of its search, epochs trained,
runs stopped early). The difference between two groups is tested with Welch's two-sample
t-test (unequal variances, two-sided); with more than two groups every pair is tested and
the p-values are Holm-adjusted. The selection itself read validation only (see
:mod:`optlab.execution.finals`); this analysis reads the final runs' test metric.
"""

from __future__ import annotations

import itertools
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
from optlab.analysis.spaces import block_spaces, differences
from optlab.errors import OptlabError
from optlab.states import State
from optlab.study.schema import FINAL_SUFFIX, is_final_block

TEST_NAME = "Welch's two-sample t-test (unequal variances, two-sided)"


def read(con: Any, result: Result, asked: Asked) -> list[Run]:
    runs = load(con, result.study, result.metric)
    (source,) = con.execute(
        "select source from studies where study = ?", [result.study]
    ).fetchone() or (None,)
    asked.found["spaces"] = block_spaces(source)
    asked.found["epochs"] = dict(
        con.execute(
            "select e.run_id, count(*) from epochs e join memberships m using (run_id) "
            "where m.study = ? group by e.run_id",
            [result.study],
        ).fetchall()
    )
    return runs


def answer(result: Result, runs: list[Run], axes: Any, rng: Any, asked: Asked) -> None:
    from scipy import stats  # scipy: slow to import, so only when an answer is computed

    by, name_of = compared_by("compare", axes, asked.by)

    runs = in_study_order(runs)
    finals = [r for r in runs if is_final_block(r.block)]
    result.tables["compare"] = []
    if not finals:
        result.findings["note"] = (
            "not answerable: the study has no final runs; give a search block "
            'final = { select = "val_acc", seeds = 10 } and run it'
        )
        return
    searched = {r.block.removesuffix(FINAL_SUFFIX) for r in finals}
    search = [r for r in runs if r.block in searched]
    for status in sorted({r.status for r in finals} - {State.DONE}):
        leave_out(result, f"final run {status}", [r for r in finals if r.status == status])
    done = [r for r in finals if r.status == State.DONE and r.value is not None]
    leave_out(
        result,
        f"final run without {result.metric}",
        [r for r in finals if r.status == State.DONE and r.value is None],
    )
    groups: dict[str, list[Run]] = {}
    for run in done:
        groups.setdefault(name_of(run), []).append(run)
    if pooled_blocks(groups):  # the same optimizer tuned in several blocks: each apart
        result.findings["blocks"] = f"{pooled_blocks(groups)}: each block is its own group"
        groups = {}
        for run in done:
            groups.setdefault(f"{name_of(run)} in {run.block}", []).append(run)
    _one_configuration_each(groups, axes)
    epochs = asked.found["epochs"]
    rows, spaces = [], {}
    for name, members in sorted(groups.items()):
        searched_in = {r.block.removesuffix(FINAL_SUFFIX) for r in members}
        label = name_of(members[0])
        tuned = [r for r in search if r.block in searched_in and name_of(r) == label]
        rows.append(_row(by, name, members, tuned, epochs, axes, stats))
        spaces[name] = {
            path: span
            for block in sorted(searched_in)
            for path, span in asked.found["spaces"].get(block, {}).items()
        }
    result.tables["compare"] = rows
    _search_spaces(result, by, rows, spaces)
    result.tables["tests"] = _tests(groups, stats)
    result.findings.update(
        question=f"each {by}'s {result.metric} after tuning, on its selected configuration "
        "trained again with fresh seeds (its final runs), with 95% Student-t intervals",
        selection="each group's configuration was selected on the validation metric its "
        "block's final.select names, never on a test metric",
        test=TEST_NAME + (", Holm-adjusted over pairs" if len(groups) > 2 else ""),
        budgets="; ".join(
            f"{r[by]}: {r['configurations']} configurations, {r['search_runs']} runs, "
            f"{r['search_epochs']} epochs ({r['stopped']} runs stopped early)"
            for r in rows
        ),
    )
    caution = test_epoch_caution(result.metric, "final run")
    if caution:
        result.findings["caution"] = caution
    if len(groups) >= 2:
        result.findings["comparison"] = _sentence(rows, result.tables["tests"], by, result.metric)


def _row(
    by: str, name: str, members: list[Run], tuned: list[Run], epochs: dict, axes: Any, stats: Any
) -> dict[str, Any]:
    values = [r.value for r in members]
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    configs = {tuple(sorted((k, repr(v)) for k, v in r.config.items())) for r in tuned}
    picked = {_shown(axes, r) for r in members}
    return {
        by: name,
        "final_runs": n,
        "mean": mean,
        "std": std,
        "ci95_low": mean - half,
        "ci95_high": mean + half,
        "selected": "; ".join(sorted(picked)),
        "configurations": len(configs),
        "search_runs": len(tuned),
        "search_epochs": sum(epochs.get(r.run_id, 0) for r in tuned),
        "stopped": sum(1 for r in tuned if r.status == State.STOPPED),
        "epochs_per_run": max((r.get("epochs") or 0 for r in tuned), default=0),
    }


def _search_spaces(
    result: Result, by: str, rows: list[dict[str, Any]], spaces: dict[str, dict]
) -> None:
    """Each group's search space (ranges as its study file states them, points and epochs
    as the store holds them), and a warning when they differ."""
    result.tables["search_spaces"] = [
        {by: name, "dimension": path, "range": text, "decades": decades}
        for name, space in sorted(spaces.items())
        for path, (text, decades) in space.items()
    ]
    points = {r[by]: r["configurations"] for r in rows}
    epochs = {r[by]: r["epochs_per_run"] for r in rows}
    result.findings["search spaces"] = " | ".join(
        f"{name}: {points[name]} points of up to {epochs[name]} epochs over "
        + ("; ".join(f"{p} {t}" for p, (t, _) in space.items()) or "nothing searched")
        for name, space in sorted(spaces.items())
    )
    differ = differences(spaces, points, epochs) if len(spaces) > 1 else ""
    if differ:
        result.findings["warning"] = (
            f"the search spaces differ ({differ}): equal budgets over unequal ranges favour "
            "the optimizer whose range was narrowed beforehand (Choi et al. 2019); give "
            "each the same ranges by one rule, or say why not"
        )


def _one_configuration_each(groups: dict[str, list[Run]], axes: Any) -> None:
    """A group's final runs confirm one selected configuration; several (parts of a study
    chosen apart, then merged) are no confirmation of any: refused, with the reason."""
    for name, members in sorted(groups.items()):
        configs = {tuple(sorted((k, repr(v)) for k, v in r.config.items())) for r in members}
        if len(configs) > 1:
            shown = "; ".join(sorted({_shown(axes, r) for r in members}))
            raise OptlabError(
                f"compare: the final runs of {name} mix {len(configs)} configurations "
                f"({shown}); each was selected on part of the search (parts of the study "
                'run apart, then merged): remove them (optlab rm --where "block like '
                "'%/final'\") and run the whole study file again, so that one selection "
                "is made over all its seeds"
            )


def _shown(axes: Any, run: Run) -> str:
    varied = [a for a in axes if a != "optimizer"] if isinstance(axes, list) else []
    return ", ".join(f"{a}={run.get(a)}" for a in varied if run.get(a) is not None) or "-"


def _tests(groups: dict[str, list[Run]], stats: Any) -> list[dict[str, Any]]:
    pairs = []
    for a, b in itertools.combinations(sorted(groups), 2):
        x, y = [r.value for r in groups[a]], [r.value for r in groups[b]]
        if len(x) < 2 or len(y) < 2:
            continue
        t, p = stats.ttest_ind(x, y, equal_var=False)
        pairs.append({"a": a, "b": b, "difference": _mean(x) - _mean(y), "t": t, "p": p})
    # Holm: the i-th smallest of m p-values times (m - i), kept monotone and at most 1.
    running = 0.0
    for i, pair in enumerate(sorted(pairs, key=lambda q: (q["p"], q["a"], q["b"]))):
        running = max(running, min(1.0, pair["p"] * (len(pairs) - i)))
        pair["p_adjusted"] = running
    return pairs


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sentence(rows: list[dict], tests: list[dict], by: str, metric: str) -> str:
    sign = 1 if higher_is_better(metric) else -1
    ranked = sorted(rows, key=lambda r: (-sign * r["mean"], r[by]))
    parts = [f"{r[by]} {r['mean']:.4g} [{r['ci95_low']:.4g}, {r['ci95_high']:.4g}]" for r in ranked]
    clear = [t for t in tests if t["p_adjusted"] < 0.05]
    if not tests:
        verdict = "too few final runs to test the difference (two a group at least)"
    elif clear:
        verdict = "; ".join(
            f"{t['a'] if sign * t['difference'] > 0 else t['b']} beats "
            f"{t['b'] if sign * t['difference'] > 0 else t['a']} by "
            f"{abs(t['difference']):.4g} (p = {t['p_adjusted']:.3g})"
            for t in clear
        )
    else:
        smallest = min(t["p_adjusted"] for t in tests)
        verdict = f"no difference at the 5% level (smallest p = {smallest:.3g})"
    return f"{metric}, mean [95% interval]: {', '.join(parts)}; {verdict}"
