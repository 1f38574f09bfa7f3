"""The slope analyses: ``lr-wd`` (log optimal LR against log WD: seed 001's inverse
relationship, -1) and ``scaling`` (log optimal LR against log batch size: the linear rule, 1),
and, for a block whose LR follows ``lr_scaling``, the check of that rule (seed 001's
experiment 3). Rows of the table in :mod:`optlab.analysis.analyze`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from optlab.analysis.core import (
    ALPHA,
    BATCH,
    LR,
    WD,
    Asked,
    Result,
    Run,
    best_per_resample,
    groups,
    higher_is_better,
    leave_out,
    matrix,
    not_yet,
    optimum,
    resamples,
    usable,
)
from optlab.analysis.optima import selection_rule
from optlab.study.steps import start_lr


def _slope_analysis(
    result: Result,
    runs: list[Run],
    rng,
    x_param: str,
    expected: dict[str, float],
    asked: Asked,
) -> None:
    """Per group: the optimal LR at each value of ``x_param``; fit log LR = a + b log x."""
    from scipy import stats  # scipy: a second to import, so only when a test is run

    higher = higher_is_better(result.metric)
    kept = usable(runs, result)
    nonpositive = [r for r in kept if not (r.get(x_param) or 0) > 0]
    leave_out(result, f"{x_param} <= 0 has no logarithm", nonpositive)
    kept = [r for r in kept if r not in nonpositive]
    points, fits = [], []
    rules: list[dict[str, Any]] = []
    not_yet(result, kept, runs, [LR, x_param])
    for label, members in groups(kept, [LR, x_param], among=runs).items():
        if any(r.get("lr_scaling") not in (None, "none") for r in members):
            # LR set by a batch scaling rule: no LR was searched, the rule is what is tested.
            # No choice is made here: the metric itself (test, where selection read
            # validation) is what the rule is judged by.
            rows, verdict = _rule_check(
                label,
                _by_x(_reported(members, asked), x_param),
                x_param,
                result.metric,
                asked.margin,
            )
            rules += rows
            result.findings[f"rule_check {label}"] = verdict
            continue
        by_x = _by_x(members, x_param)
        xs = sorted(by_x)
        opts = []
        for x in xs:
            opt = optimum(by_x[x], LR, higher, rng)
            opts.append(opt["optimum"])
            points.append(
                {
                    "group": label,
                    x_param: x,
                    "optimal_lr": opt["optimum"],
                    "ci_low": opt["ci_low"],
                    "ci_high": opt["ci_high"],
                    "at_edge": opt["at_edge"],
                    "seeds": opt["seeds"],
                    **({"note": opt["note"]} if "note" in opt else {}),
                }
            )
        fit: dict[str, Any] = {"group": label, "points": len(xs)}
        known = [(x, o) for x, o in zip(xs, opts, strict=True) if o is not None]
        if len(known) < len(xs):
            fit["note"] = (
                f"{len(xs) - len(known)} of {len(xs)} {x_param} values had one LR tried: "
                "no optimum there" + ("" if len(known) >= 2 else "; nothing to fit")
            )
        xs, opts = [x for x, _ in known], [o for _, o in known]
        if len(xs) >= 2:
            lx, ly = np.log(xs), np.log(opts)
            if len(xs) >= 3 and np.ptp(ly) > 0:
                reg = stats.linregress(lx, ly)
                t = stats.t.ppf(0.975, len(xs) - 2)
                fit.update(
                    slope=reg.slope,
                    intercept=reg.intercept,
                    r=reg.rvalue,
                    p_slope_zero=reg.pvalue,
                    ci_low=reg.slope - t * reg.stderr,
                    ci_high=reg.slope + t * reg.stderr,
                )
            else:  # two points, or the same optimum everywhere (slope exactly 0)
                slope = float(np.polyfit(lx, ly, 1)[0]) if np.ptp(ly) > 0 else 0.0
                fit.update(slope=slope, ci_low=None, ci_high=None)
            fit.update(_bootstrap_slope(members, x_param, xs, higher, rng))
            for name, value in expected.items():
                lo = fit.get("ci_low") if fit.get("ci_low") is not None else fit.get("boot_ci_low")
                hi = (
                    fit.get("ci_high")
                    if fit.get("ci_high") is not None
                    else fit.get("boot_ci_high")
                )
                fit[f"consistent_with_{name}"] = (
                    None if lo is None or hi is None else bool(lo - 1e-9 <= value <= hi + 1e-9)
                )
        fits.append(fit)
    result.tables["optima"] = points
    result.tables["fit"] = fits
    if rules:
        result.tables["rule_check"] = rules
        result.findings["equivalence margin"] = margin_rule(result.metric, asked.margin)
    if points:
        result.findings["selection"] = selection_rule(result, asked, f"each optimal {LR}")


def _reported(members: list[Run], asked: Asked) -> list[Run]:
    """The runs valued by the metric asked for, where selection read its validation
    counterpart (``found["test"]``, see optima.read_selecting)."""
    tests = asked.found.get("test")
    if tests is None:
        return members
    return [
        replace(r, value=tests.get(r.run_id)) for r in members if tests.get(r.run_id) is not None
    ]


def _by_x(members: list[Run], x_param: str) -> dict[Any, list[Run]]:
    by_x: dict[Any, list[Run]] = {}
    for r in members:
        by_x.setdefault(r.get(x_param), []).append(r)
    return by_x


def _rule_check(
    label: str, by_x: dict[Any, list[Run]], x_param: str, metric: str, margin: float | None
) -> tuple[list[dict[str, Any]], str]:
    """A group whose LR follows a batch scaling rule (seed 001's experiment 3: LR = 0.1 x
    B / 128): does the metric hold across batch sizes? Each batch size against the rule's
    reference batch: Welch's t-test for a difference (Benjamini-Hochberg adjusted), and
    TOST (two one-sided Welch tests) for equivalence within the margin. The rule holds only
    where equivalence is shown at every batch size (an intersection-union test: each at
    alpha, no adjustment); a difference that is merely not significant shows nothing."""
    from scipy import stats  # scipy: a second to import, so only when a test is run

    higher = higher_is_better(metric)
    xs = sorted(by_x)
    first = by_x[xs[0]][0]
    reference = first.get("lr_reference_batch") or None
    ref_x = reference if reference in by_x else xs[len(xs) // 2]
    base = [r.value for r in by_x[ref_x]]
    margin = margin if margin is not None else default_margin(metric, float(np.mean(base)))
    rows, raw = [], []
    for x in xs:
        values = [r.value for r in by_x[x]]
        row = {
            "group": label,
            x_param: x,
            "lr": _start_lr(by_x[x][0]),
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "seeds": len(values),
            "vs_reference": float(np.mean(values) - np.mean(base)),
            "p": None,
            "p_equivalent": None,
            "detectable": None,
        }
        if x != ref_x and len(values) > 1 and len(base) > 1 and np.std(values + base) > 0:
            row["p"] = float(stats.ttest_ind(values, base, equal_var=False).pvalue)
            row["p_equivalent"] = tost(values, base, margin)
            row["detectable"] = detectable_difference(values, base)
            raw.append(row)
        rows.append(row)
    for row in rows:
        row["q"] = None
    if raw:
        for row, q in zip(raw, stats.false_discovery_control([r["p"] for r in raw]), strict=True):
            row["q"] = float(q)
    worse = [
        r[x_param]
        for r in rows
        if r["q"] is not None and r["q"] < ALPHA and (r["vs_reference"] < 0) == higher
    ]
    for row in rows:
        row["worse"] = row[x_param] in worse
        row["equivalent"] = None if row["p_equivalent"] is None else row["p_equivalent"] < ALPHA
    rule = f"{first.get('lr_scaling')} LR scaling rule, reference {x_param} {ref_x}"
    tested = [r for r in rows if r[x_param] != ref_x]
    if worse:
        return rows, f"{rule}: the metric is significantly worse at {', '.join(map(str, worse))}"
    if not raw or len(raw) < len(tested):
        return rows, f"{rule}: not testable (needs two or more seeds at each {x_param})"
    if all(r["equivalent"] for r in raw):
        return rows, (
            f"{rule}: holds within ±{margin:.3g} of the reference at every {x_param} "
            f"(TOST equivalence test, each p < {ALPHA:g})"
        )
    open_ = [r for r in raw if not r["equivalent"]]
    seeds = sorted({r["seeds"] for r in open_} | {len(base)})
    detectable = ", ".join(f"{r['detectable']:.3g} at {r[x_param]}" for r in open_)
    return rows, (
        f"{rule}: not shown either way (n too small): within ±{margin:.3g} not shown at "
        f"{', '.join(str(r[x_param]) for r in open_)}, and no difference significant; with "
        f"{'-'.join(map(str, (seeds[0], seeds[-1]) if len(seeds) > 1 else seeds))} seeds the "
        f"smallest differences this study could detect are {detectable} (80% power, alpha "
        f"{ALPHA:g})"
    )


def default_margin(metric: str, reference_mean: float) -> float:
    """The equivalence margin when none is asked: one point of an accuracy (0.01), else 2%
    of the reference's mean (a loss has no fixed scale)."""
    return 0.01 if higher_is_better(metric) else 0.02 * abs(reference_mean)


def margin_rule(metric: str, asked: float | None) -> str:
    if asked is not None:
        return f"±{asked:g} (--margin)"
    if higher_is_better(metric):
        return "±0.01, one point of accuracy (the default; --margin to change)"
    return "±2% of the reference's mean (the default; --margin to change)"


def tost(values: list[float], base: list[float], margin: float) -> float:
    """TOST's p-value that mean(values) - mean(base) lies within (-margin, margin): the
    larger of the two one-sided Welch tests' p-values."""
    from scipy import stats  # scipy: a second to import, so only when a test is run

    shifted = np.asarray(values, dtype=float)
    above = stats.ttest_ind(shifted + margin, base, equal_var=False, alternative="greater")
    below = stats.ttest_ind(shifted - margin, base, equal_var=False, alternative="less")
    return float(max(above.pvalue, below.pvalue))


def detectable_difference(values: list[float], base: list[float], power: float = 0.8) -> float:
    """The smallest true difference Welch's two-sided test at ALPHA finds with ``power``,
    given these samples' spread: (t[1 - alpha/2] + t[power]) x the standard error, at the
    Welch-Satterthwaite degrees of freedom."""
    from scipy import stats  # scipy: a second to import, so only when a test is run

    va = np.var(values, ddof=1) / len(values)
    vb = np.var(base, ddof=1) / len(base)
    se = float(np.sqrt(va + vb))
    df = (va + vb) ** 2 / (va**2 / (len(values) - 1) + vb**2 / (len(base) - 1))
    return float((stats.t.ppf(1 - ALPHA / 2, df) + stats.t.ppf(power, df)) * se)


def _start_lr(run: Run) -> float | None:
    """The LR the run started from (optlab.study.steps.start_lr, from the flattened config)."""

    return start_lr(
        {
            "optimizer": {"lr": run.get("optimizer.lr")},
            "batch_schedule": {"batch_size": run.get("batch_schedule.batch_size")},
            "lr_scaling": run.get("lr_scaling"),
            "lr_reference_batch": run.get("lr_reference_batch"),
        }
    )


def _bootstrap_slope(
    members: list[Run], x_param: str, xs: list[Any], higher: bool, rng
) -> dict[str, Any]:
    """Slope of log optimal LR vs log x over seed resamples: a 95% percentile interval."""
    seeds = sorted({r.seed for r in members})
    if len(seeds) < 2:
        return {"boot_ci_low": None, "boot_ci_high": None}
    mats = []
    for x in xs:
        values, _, m = matrix([r for r in members if r.get(x_param) == x], LR)
        full = np.full((len(seeds), len(values)), np.nan)
        present = sorted({r.seed for r in members if r.get(x_param) == x})
        for i, s in enumerate(present):
            full[seeds.index(s)] = m[i]
        mats.append((values, full))
    idx = resamples(len(seeds), rng)  # the same seed resamples for every x
    ly = np.log(
        np.stack(
            [np.asarray(vals)[best_per_resample(m, higher, rng, idx)] for vals, m in mats], axis=1
        )
    )  # (resamples, xs)
    lx = np.log(np.asarray(xs, dtype=float))
    centred = lx - lx.mean()
    slopes = (ly - ly.mean(axis=1, keepdims=True)) @ centred / (centred @ centred)
    slopes = np.round(np.where(np.ptp(ly, axis=1) > 0, slopes, 0.0), 12)  # no 1e-17 noise
    lo, hi = np.percentile(slopes, [2.5, 97.5])
    return {"boot_ci_low": float(lo), "boot_ci_high": float(hi)}


def lr_wd(result: Result, runs: list[Run], axes: list[str], rng: Any, asked: Asked) -> None:
    _slope_analysis(result, runs, rng, WD, {"inverse": -1.0}, asked)
    result.findings["question"] = (
        "slope of log optimal LR against log WD; -1 means the "
        "optimal LR is inversely proportional to WD"
    )


def scaling(result: Result, runs: list[Run], axes: list[str], rng: Any, asked: Asked) -> None:
    _slope_analysis(result, runs, rng, BATCH, {"linear_rule": 1.0, "sqrt_rule": 0.5}, asked)
    result.findings["question"] = (
        "where an LR grid was tried at each batch size: slope of log optimal LR against log "
        "batch size (1 is the linear scaling rule, 0.5 the square-root rule); where the LR "
        "follows lr_scaling: does the metric hold across batch sizes (rule_check: a drop "
        "significant after Benjamini-Hochberg, or equivalence within the margin by TOST; "
        "neither is 'not shown either way')"
    )
