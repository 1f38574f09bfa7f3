"""`optlab analyze warmup`: the optimal warmup per data regime, a fitted rule, and seed 002's
four hypotheses, each tested as the seed states it.

Dataset size is the number of training examples a run trains on (``examples_per_class``
times the classes, as the dataset plugin reports it, less any validation split). This is the
seed's "Total" column, and the one scale on which CIFAR-10 (50 to 5,000 per class) and
CIFAR-100 (5 to 500 per class) regimes line up (500 to 50,000 examples).

A group is one dataset with one optimizer (and whatever else the study holds fixed): every
hypothesis is tested within groups first and then combined, never on rows pooled across
datasets or optimizers.

- H1, "warmup benefit peaks at intermediate dataset sizes (500-5K examples)": the benefit of
  warmup at a size is the metric at the best warmup minus the metric without warmup. The best
  warmup is chosen on the other seeds of the cell and the benefit measured on the held-out
  seed (leave-one-seed-out), so that choosing and measuring on the same noise does not
  inflate it (the winner's curse); groups with one seed cannot do this and are left out of
  H1. Test: least squares of benefit on log10(size) and its square, with an intercept per
  group; supported when the curvature is negative (one-sided t-test), the vertex lies
  inside the sizes tried, and the peak falls in 500-5,000 examples.
- H2, "optimal warmup decreases as dataset size decreases": per group, Spearman's rho
  between size and each seed's optimal warmup (a tie between warmups counts as their mean),
  one-sided; the groups' one-sided p-values are combined with Stouffer's method weighted by
  sqrt(n). A group whose optimal warmup never changes counts as rho = 0, p = 0.5.
- H3, "patterns replicate across datasets": per optimizer, each other dataset's profile
  (metric minus its size's mean, per size and warmup) is correlated with the reference
  dataset's (``[analysis.warmup] reference``, default the first block), sizes paired by
  rank; Pearson, one-sided; every dataset must replicate, so the verdict uses the largest p.
- H4, "AdamW shows reduced warmup sensitivity compared to SGD": sensitivity of a cell is
  each seed's range (best minus worst over warmups) averaged over seeds, which does not grow
  or shrink with the number of seeds; paired one-sided t-test over the (dataset, size) cells
  both optimizers ran. The optimizers are ``[analysis.warmup] compare`` (default adamw, sgd).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from optlab.analysis.core import (
    ALPHA,
    REGIME,
    WARMUP,
    Asked,
    Result,
    Run,
    argbest,
    flat_values,
    groups,
    higher_is_better,
    leave_out,
    matrix,
    nanmean,
    not_yet,
    optimum,
    usable,
)
from optlab.analysis.optima import selection_rule
from optlab.plugins.registry import default_registry
from optlab.study.schema import AnalysisSettings

H1_RANGE = (500, 5000)

H1 = "warmup benefit peaks at intermediate dataset sizes (500-5,000 examples)"
H2 = "optimal warmup decreases as dataset size decreases"
H3 = "the size x warmup pattern replicates across datasets"
H4 = "{a} is less warmup-sensitive than {b}"


def train_size(run: Run, cache: dict[str, int | None]) -> int | None:
    """Training examples of a run, from its dataset plugin's facts (no data is loaded)."""

    table = {k.partition(".")[2]: v for k, v in run.config.items() if k.startswith("dataset.")}
    name = run.get("dataset")
    key = json.dumps([name, table], sort_keys=True, default=str)
    if key not in cache:
        try:
            plugin = default_registry().get("dataset", str(name))
            facts = plugin.info(plugin.params.model_validate(table)) if plugin.info else {}
            cache[key] = facts.get("train_size")
        except Exception:  # noqa: BLE001 - an unknown plugin or file: left out, with the reason
            cache[key] = None
    return cache[key]


def analyze(result: Result, runs: list[Run], axes: list[str], rng: Any, asked: Asked) -> None:
    opts: AnalysisSettings = asked.found["settings"]
    higher = higher_is_better(result.metric)
    kept = usable(runs, result)
    missing = [r for r in kept if r.get(REGIME) is None or r.get(WARMUP) is None]
    leave_out(result, f"no {REGIME} or {WARMUP} in its config", missing)
    kept = [r for r in kept if r not in missing]
    cache: dict[str, int | None] = {}
    sizes = {r.run_id: train_size(r, cache) for r in kept}
    unsized = [r for r in kept if not sizes[r.run_id]]
    leave_out(result, "its dataset plugin does not say how many training examples it has", unsized)
    kept = [r for r in kept if sizes[r.run_id]]
    cells: list[Cell] = []
    optima, rules = [], []
    not_yet(result, kept, runs, [WARMUP, REGIME])
    for label, members in groups(kept, [WARMUP, REGIME], among=runs).items():
        group = []
        for regime in sorted({r.get(REGIME) for r in members}):
            at = [r for r in members if r.get(REGIME) == regime]
            cell = Cell(label, members[0], regime, sizes[at[0].run_id], *matrix(at, WARMUP))
            group.append(cell)
            opt = optimum(at, WARMUP, higher, rng)
            optima.append(
                {
                    "group": label,
                    "examples_per_class": regime,
                    "examples": cell.size,
                    "optimal_warmup": opt["optimum"],
                    "ci_low": opt["ci_low"],
                    "ci_high": opt["ci_high"],
                    "metric_mean": opt["metric_mean"],
                    "seeds": opt["seeds"],
                }
            )
        rules.append(
            _rule(label, group, [o["optimal_warmup"] for o in optima if o["group"] == label])
        )
        cells += group
    sign = 1.0 if higher else -1.0
    benefits = _benefits(cells, sign, result)
    result.tables["optimal_warmup"] = optima
    result.tables["rule"] = rules
    result.tables["benefit"] = [
        {"group": g, "examples": n, "benefit_mean": float(np.mean(v)), "held_out_seeds": len(v)}
        for (g, n), v in sorted(_by_cell(benefits).items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]
    a, b, unrun = _compare(opts, kept)
    result.tables["hypotheses"] = [
        _h1(benefits),
        _h2(cells, sign),
        _h3(cells, opts.warmup.reference, kept),
        _h4(cells, sign, a, b, unrun),
    ]
    result.findings["dataset_size"] = (
        "training examples (examples_per_class x classes, less any validation split)"
    )
    val = asked.found.get("selection")
    result.findings["selection"] = (
        f"each optimal warmup and H1-H4 read {val} (the validation split); the test set is not read"
        if val
        else selection_rule(result, asked, "each optimal warmup (and H1's best warmup)")
    )


class Cell:
    """One group at one regime: the seeds x warmups matrix of the metric."""

    def __init__(
        self,
        group: str,
        run: Run,
        regime: int,
        size: int,
        warmups: list[Any],
        seeds: list[int],
        m: np.ndarray,
    ):
        self.group, self.run, self.regime, self.size = group, run, regime, size
        self.warmups, self.seeds, self.m = warmups, seeds, m

    @property
    def dataset(self) -> str:
        return _dataset_of(self.run)

    @property
    def optimizer(self) -> str:
        return str(self.run.get("optimizer"))


def _rule(label: str, group: list[Cell], best_w: list[Any]) -> dict[str, Any]:
    from scipy import stats  # scipy: a second to import, so only when a test is run

    rule: dict[str, Any] = {"group": label, "regimes": len(group)}
    regimes = [c.regime for c in group]
    if len(regimes) >= 3 and np.ptp(best_w) > 0:
        reg = stats.linregress(np.log10(regimes), best_w)
        rule.update(
            rule=f"optimal_warmup = {reg.intercept:.3g} + {reg.slope:.3g} * "
            f"log10(examples_per_class)",
            slope=reg.slope,
            intercept=reg.intercept,
            r=reg.rvalue,
            p=reg.pvalue,
        )
    else:
        rule.update(
            rule=f"optimal_warmup = {best_w[0]:g} at every regime"
            if best_w and np.ptp(best_w) == 0
            else "too few regimes to fit",
            slope=None,
        )
    return rule


def _verdict(
    name: str,
    claim: str,
    test: str,
    stat: float | None,
    p: float | None,
    n: int,
    effect: str = "",
    note: str = "",
    supported: bool | None = None,
) -> dict[str, Any]:
    untested = p is None or (isinstance(p, float) and math.isnan(p))
    if supported is None and not untested:
        supported = bool(p < ALPHA)
    return {
        "hypothesis": name,
        "claim": claim,
        "test": test,
        "statistic": stat,
        "n": n,
        "p": p,
        "effect": effect,
        "supported": None if untested else supported,
        "note": note,
    }


# ---- H1 -----------------------------------------------------------------------------------


def _benefits(cells: list[Cell], sign: float, result: Result) -> list[tuple[str, int, float]]:
    """(group, size, benefit) per held-out seed: the best warmup chosen on the other seeds."""
    out, single = [], []
    for cell in cells:
        if 0 not in cell.warmups:
            continue
        if len(cell.seeds) < 2:
            single.append(cell)
            continue
        j0 = cell.warmups.index(0)
        for i in range(len(cell.seeds)):
            others = np.delete(cell.m, i, axis=0)
            jb = argbest(nanmean(others), sign > 0)
            if not (np.isnan(cell.m[i, jb]) or np.isnan(cell.m[i, j0])):
                out.append((cell.group, cell.size, sign * (cell.m[i, jb] - cell.m[i, j0])))
    groups_left = sorted({c.group for c in single})
    if groups_left:
        result.findings["h1_left_out"] = (
            "one seed, so the best warmup cannot be chosen on other seeds: "
            + "; ".join(groups_left)
        )
    return out


def _by_cell(benefits: list[tuple[str, int, float]]) -> dict[tuple[str, int], list[float]]:
    out: dict[tuple[str, int], list[float]] = {}
    for g, n, v in benefits:
        out.setdefault((g, n), []).append(v)
    return out


def _h1(benefits: list[tuple[str, int, float]]) -> dict[str, Any]:
    from scipy import stats  # scipy: a second to import, so only when a test is run

    test = (
        "least squares of held-out benefit on log10(examples) and its square, an "
        "intercept per group; one-sided t-test of curvature < 0, the vertex inside the "
        "sizes tried and in 500-5,000"
    )
    names = sorted({g for g, _, _ in benefits})
    x = np.array([math.log10(n) for _, n, _ in benefits])
    n, k = len(benefits), len(names) + 2
    if n <= k or len(set(x.tolist())) < 3:
        return _verdict(
            "H1",
            H1,
            test,
            None,
            None,
            n,
            note=(
                "not testable: needs warmup 0, two or more seeds, and three or more dataset sizes"
            ),
        )
    design = np.column_stack(
        [[1.0 if g == name else 0.0 for g, _, _ in benefits] for name in names] + [x, x**2]
    )
    y = np.array([v for _, _, v in benefits])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    s2 = float(resid @ resid) / (n - k)
    cov = s2 * np.linalg.pinv(design.T @ design)
    b, c = coef[-2], coef[-1]
    se_c = math.sqrt(cov[-1, -1])
    if se_c == 0:
        t, p = (-math.inf, 0.0) if c < 0 else (math.inf, 1.0)
    else:
        t = c / se_c
        p = float(stats.t.cdf(t, n - k))
    effect = f"curvature {c:.4g} per decade^2"
    if c >= 0:
        return _verdict(
            "H1",
            H1,
            test,
            float(t),
            p,
            n,
            effect,
            note=("no peak: the fitted benefit curves upward (or is flat) in log size"),
            supported=False,
        )
    vertex = -b / (2 * c)
    grad = np.array([-1 / (2 * c), b / (2 * c * c)])
    se_v = math.sqrt(max(float(grad @ cov[-2:, -2:] @ grad), 0.0))
    peak = 10**vertex
    lo, hi = 10 ** (vertex - 1.96 * se_v), 10 ** (vertex + 1.96 * se_v)
    interior = x.min() < vertex < x.max()
    in_range = H1_RANGE[0] <= peak <= H1_RANGE[1]
    note = (
        f"peak at {peak:,.0f} examples (95% CI {lo:,.0f}-{hi:,.0f}, delta method); "
        f"sizes tried {10 ** x.min():,.0f}-{10 ** x.max():,.0f}"
        + ("" if interior else "; the vertex is outside them: no interior peak")
        + ("" if in_range else "; the peak is outside 500-5,000")
    )
    return _verdict(
        "H1",
        H1,
        test,
        float(t),
        p,
        n,
        effect + f", peak at {peak:,.0f} examples",
        note,
        supported=bool(p < ALPHA and interior and in_range),
    )


# ---- H2 -----------------------------------------------------------------------------------


def _best_warmup(row: np.ndarray, warmups: list[Any], higher: bool) -> float | None:
    """A seed's optimal warmup; equal best values give the mean of their warmups."""
    if np.all(np.isnan(row)):
        return None
    filled = np.where(np.isnan(row), -np.inf if higher else np.inf, row)
    best = np.max(filled) if higher else np.min(filled)
    return float(np.mean([w for w, v in zip(warmups, filled, strict=True) if v == best]))


def _h2(cells: list[Cell], sign: float) -> dict[str, Any]:
    from scipy import stats  # scipy: a second to import, so only when a test is run

    test = (
        "Spearman's rho of dataset size and each seed's optimal warmup (ties: their mean) "
        "within each group, one-sided; groups combined by Stouffer's z weighted by sqrt(n)"
    )
    per_group: dict[str, list[tuple[int, float]]] = {}
    for cell in cells:
        for row in cell.m:
            w = _best_warmup(row, cell.warmups, sign > 0)
            if w is not None:
                per_group.setdefault(cell.group, []).append((cell.size, w))
    zs, weights, rhos, notes = [], [], [], []
    for group, points in per_group.items():
        if len(points) < 3 or len({s for s, _ in points}) < 2:
            continue
        sizes, ws = zip(*points, strict=True)
        if len(set(ws)) < 2:
            rho, p = 0.0, 0.5
            notes.append(f"{group}: the optimal warmup never changes (rho 0)")
        else:
            res = stats.spearmanr(sizes, ws, alternative="greater")
            rho, p = float(res.statistic), float(res.pvalue)
            notes.append(f"{group}: rho={rho:.3g}, p={p:.3g}, n={len(points)}")
        zs.append(stats.norm.isf(min(max(p, 1e-300), 1 - 1e-16)))
        weights.append(math.sqrt(len(points)))
        rhos.append(rho)
    n = sum(len(v) for v in per_group.values())
    if not zs:
        return _verdict(
            "H2",
            H2,
            test,
            None,
            None,
            n,
            note=("not testable: needs a group with two or more dataset sizes"),
        )
    w = np.array(weights)
    z = float(np.dot(w, zs) / math.sqrt(np.dot(w, w)))
    p = float(stats.norm.sf(z))
    effect = f"mean rho {float(np.average(rhos, weights=w)):.3g} (weighted by sqrt(n))"
    return _verdict("H2", H2, test, z, p, n, effect, "; ".join(notes))


# ---- H3 -----------------------------------------------------------------------------------


def _profile(cells: list[Cell]) -> dict[tuple[int, Any], float]:
    """(size rank, warmup) -> mean metric minus the mean at that size."""
    out = {}
    for rank, cell in enumerate(sorted(cells, key=lambda c: c.size)):
        mean = nanmean(cell.m)
        for w, v in zip(cell.warmups, mean - np.nanmean(mean), strict=True):
            if not np.isnan(v):
                out[(rank, w)] = float(v)
    return out


def _h3(cells: list[Cell], reference: str | None, runs: list[Run]) -> dict[str, Any]:
    from scipy import stats  # scipy: a second to import, so only when a test is run

    test = (
        "Pearson's r of each dataset's size-centred profile over (size, warmup) cells "
        "with the reference dataset's, same optimizer, sizes paired by rank; one-sided; "
        "the largest p"
    )
    ref_runs = [r for r in runs if r.block == reference] if reference else runs[:1]
    if not ref_runs:
        return _verdict(
            "H3",
            H3,
            test,
            None,
            None,
            0,
            note=(f"not testable: the reference block {reference!r} has no finished runs"),
        )
    ref_dataset = _dataset_of(ref_runs[0])
    results, flat = [], []
    for optimizer in dict.fromkeys(c.optimizer for c in cells):
        mine = [c for c in cells if c.optimizer == optimizer]
        ref = [c for c in mine if c.dataset == ref_dataset]
        if not ref:
            continue
        ref_profile = _profile(ref)
        for dataset in dict.fromkeys(c.dataset for c in mine if c.dataset != ref_dataset):
            other = [c for c in mine if c.dataset == dataset]
            prof = _profile(other)
            pairs = [(v, prof[k]) for k, v in ref_profile.items() if k in prof]
            if len(pairs) < 3:
                continue
            ours, theirs = zip(*pairs, strict=True)
            label = f"{ref[0].group} vs {other[0].group}"
            if flat_values(list(ours)) or flat_values(list(theirs)):
                # A correlation with a constant is undefined (scipy gives nan): say which.
                named = ref[0].group if flat_values(list(ours)) else other[0].group
                flat.append(f"{label} ({named} is flat)")
                continue
            r = stats.pearsonr(ours, theirs, alternative="greater")
            results.append((label, float(r.statistic), float(r.pvalue), len(pairs)))
    tested = "; ".join(f"{n}: r={r:.3g}, p={p:.3g}, n={k}" for n, r, p, k in results)
    if flat:  # every dataset must replicate: one that cannot be correlated leaves H3 untested
        return _verdict(
            "H3",
            H3,
            test,
            None,
            None,
            sum(x[3] for x in results),
            note=(
                f"not testable: reference: block {ref_runs[0].block}; "
                + "; ".join(flat)
                + ": its metric does not move with warmup within a size (every cell equal to "
                "its size's mean), so a correlation of patterns is undefined"
                + (f"; tested: {tested}" if tested else "")
            ),
        )
    if not results:
        return _verdict(
            "H3",
            H3,
            test,
            None,
            None,
            0,
            note=(
                "not testable: needs a second dataset with the same optimizer as the reference "
                "and three or more (size, warmup) cells in common"
            ),
        )
    worst = max(results, key=lambda x: x[2])
    note = f"reference: block {ref_runs[0].block}; " + tested
    return _verdict(
        "H3",
        H3,
        test,
        worst[1],
        worst[2],
        sum(x[3] for x in results),
        f"smallest r {min(x[1] for x in results):.3g}",
        note,
    )


def _dataset_of(run: Run) -> str:
    """What makes a dataset another dataset: its table, less the regime."""
    return json.dumps(
        {
            k: v
            for k, v in run.config.items()
            if (k == "dataset" or k.startswith("dataset.")) and k != REGIME
        },
        sort_keys=True,
        default=str,
    )


# ---- H4 -----------------------------------------------------------------------------------


def _compare(opts: AnalysisSettings, runs: list[Run]) -> tuple[str | None, str | None, list[str]]:
    """The two optimizers H4 compares, and those of them with no finished runs yet (a
    study run in parts: H4 waits for them, the rest of the analysis does not)."""
    used = {str(r.get("optimizer")) for r in runs}
    chosen = opts.warmup.compare
    if chosen is not None:
        a, b = chosen
        return a, b, [name for name in chosen if name not in used]
    if {"adamw", "sgd"} <= used:
        return "adamw", "sgd", []
    return None, None, []


def _sensitivity(cell: Cell) -> float | None:
    """Each seed's range over warmups (seeds with every warmup), averaged over seeds."""
    full = cell.m[~np.isnan(cell.m).any(axis=1)]
    if len(full) == 0 or cell.m.shape[1] < 2:
        return None
    return float(np.mean(full.max(axis=1) - full.min(axis=1)))


def _h4(
    cells: list[Cell], sign: float, a: str | None, b: str | None, not_yet: list[str] = ()
) -> dict[str, Any]:
    from scipy import stats  # scipy: a second to import, so only when a test is run

    claim = H4.format(a=a or "AdamW", b=b or "SGD")
    test = (
        "paired t-test, one-sided, of warmup sensitivity (each seed's best minus worst "
        "over warmups, averaged over seeds), first vs second optimizer, over the "
        "(dataset, size) cells both ran"
    )
    untestable = (
        f"not testable yet: no finished runs of {' or '.join(not_yet)}"
        if not_yet
        else "not testable: needs adamw and sgd runs, or name the two optimizers with "
        '[analysis.warmup] compare = ["less_sensitive", "other"]'
        if a is None
        else None
    )
    if untestable is not None:
        return _verdict("H4", claim, test, None, None, 0, note=untestable)
    sens: dict[tuple[str, str, int], float] = {}
    for cell in cells:
        value = _sensitivity(cell)
        if value is not None:
            sens[(cell.optimizer, cell.dataset, cell.size)] = value
    pairs = [
        (va, sens[(b, d, n)]) for (o, d, n), va in sens.items() if o == a and (b, d, n) in sens
    ]
    if len(pairs) < 2:
        return _verdict(
            "H4",
            claim,
            test,
            None,
            None,
            len(pairs),
            note=(f"not testable: needs {a} and {b} runs on the same dataset at two or more sizes"),
        )
    xa, xb = (np.array(v) for v in zip(*pairs, strict=True))
    # Sensitivities differ by orders of magnitude between sizes: compare them as ratios.
    if np.all(xa > 0) and np.all(xb > 0):
        d, scale = np.log(xa) - np.log(xb), "log ratio"
    else:
        d, scale = xa - xb, "difference (a sensitivity of 0 has no log)"
    if np.ptp(d) == 0:
        t = -math.inf if d[0] < 0 else math.inf if d[0] > 0 else 0.0
        p = 0.0 if d[0] < 0 else 1.0 if d[0] > 0 else 0.5
    else:
        res = stats.ttest_1samp(d, 0.0, alternative="less")
        t, p = float(res.statistic), float(res.pvalue)
    effect = f"mean sensitivity {a} {xa.mean():.4g} vs {b} {xb.mean():.4g}"
    if scale == "log ratio":
        effect += f", geometric mean ratio {math.exp(d.mean()):.3g}"
    return _verdict(
        "H4",
        claim,
        test.replace("paired t-test", f"paired t-test of the {scale}"),
        float(t),
        float(p),
        len(pairs),
        effect,
    )
