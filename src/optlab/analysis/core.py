"""What the analyses share: a run as they read it (its reduced metric, seed and flat
config), a result (tables, findings, what was left out), grouping runs and labelling the
groups, and the optimum of a hyperparameter with its bootstrap over seeds."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optlab.analysis.results import Axes, clean, parse_metric, reduce_sql
from optlab.errors import OptlabError
from optlab.states import State
from optlab.study import paths

LR, WD, BATCH = "optimizer.lr", "optimizer.weight_decay", "batch_schedule.batch_size"
WARMUP, REGIME = "lr_schedule.warmup_epochs", "dataset.examples_per_class"
RESAMPLES = 2000
ALPHA = 0.05


@dataclass
class Run:
    run_id: str
    seed: int
    status: str
    config: dict[str, Any]  # flattened: {"optimizer.lr": 0.1, "optimizer": "sgd", ...}
    value: float | None
    position: int = 0  # in the study's expansion: blocks in file order, then their runs
    block: str = ""

    def get(self, path: str) -> Any:
        return self.config.get(path)


@dataclass
class Result:
    """What an analysis found: named tables, scalar findings, and what it left out."""

    analysis: str
    study: str
    metric: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    findings: dict[str, Any] = field(default_factory=dict)
    left_out: list[dict[str, Any]] = field(default_factory=list)
    matrix: int | None = None  # the study file's runs, when only a part of them is run

    def to_json(self) -> dict[str, Any]:
        return clean(
            {
                "analysis": self.analysis,
                "study": self.study,
                "metric": self.metric,
                "findings": self.findings,
                "tables": self.tables,
                "left_out": self.left_out,
            }
        )


@dataclass
class Asked:
    """What the user asked an analysis (``--param``, ``--epsilon``), and what its read step
    found in the store for its answer (``found``)."""

    param: str | None = None
    epsilon: float | None = None
    by: str | None = None
    target: str | None = None  # profile: COLUMN=VALUE
    time: str | None = None  # profile: steps, sfo or seconds
    order: str | None = None  # profile: median-then-best (default) or best-then-median
    margin: float | None = None  # scaling: the equivalence margin of a rule check
    found: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyFacts:
    """What the report knows of a study when it picks its analyses."""

    axes: list[str]
    optimizers: int  # distinct optimizer plugins among its runs
    probes: set[str]  # probes with values, and probes its runs ask for
    validated: bool = False  # some epoch has a validation metric
    confirmed: bool = False  # it has final runs (a block's final = {...})


@dataclass(frozen=True)
class Analysis:
    """A row of the table of analyses, read by ``optlab analyze``, ``Store.analyze`` and the
    report.

    ``axes``: what the study must vary, checked before anything is read (and the report
    shows the analysis only for such studies). ``fits``: what else the report asks of a
    study. ``read(con, result, asked)``: its runs, read while the store is open (default:
    each run's reduced metric). ``answer(result, runs, axes, rng, asked)``: fills the
    result, with the store closed."""

    name: str
    help: str
    answer: Callable[..., None]
    axes: tuple[str, ...] = ()
    fits: Callable[[StudyFacts], bool] = field(default=lambda facts: True)
    read: Callable[[Any, Result, Asked], list[Run]] | None = None

    def shown_for(self, facts: StudyFacts) -> bool:
        return all(a in facts.axes for a in self.axes) and self.fits(facts)


def compared_by(analysis: str, axes: Any, by: str | None) -> tuple[str, Callable[[Run], str]]:
    """``--by`` of an analysis that compares groups (default: the optimizer), and each run's
    group label; one line when the study does not vary it."""
    by = by or "optimizer"
    if by != "optimizer" and by not in axes:
        raise OptlabError(
            f"analyze {analysis}: --by {by}: the study does not vary it; it varies "
            f"{', '.join(axes) or 'nothing'}"
        )

    def name_of(run: Run) -> str:
        if isinstance(axes, Axes) and axes.varied(by):
            return axes.label(by, run.get)
        return str(run.get(by))

    return by, name_of


def pooled_blocks(groups: dict[str, list[Run]]) -> str | None:
    """Which groups hold runs of more than one block (None when none does): an answer
    that pools them says so."""
    spread = {name: sorted({r.block for r in runs}) for name, runs in groups.items()}
    many = {name: blocks for name, blocks in spread.items() if len(blocks) > 1}
    if not many:
        return None
    return "; ".join(f"{name} pools blocks {', '.join(b)}" for name, b in sorted(many.items()))


def numeric_axes(axes: list[str]) -> list[str]:
    """The axes with values to find an optimum over (not the plugin names)."""
    return [a for a in axes if a != "optimizer" and not a.endswith(".name")]


# ---- loading ------------------------------------------------------------------------------


def flat_config(text: str) -> dict[str, Any]:
    flat = {}
    for path, value in paths.flatten(json.loads(text)).items():
        slot, _, rest = path.partition(".")
        flat[slot if rest == "name" else path] = value
    return flat


def load(con: Any, study: str, metric: str) -> list[Run]:
    reducer, column = parse_metric(metric)
    rows = con.execute(
        f"""select r.run_id, r.seed, r.status, any_value(r.config),
                   {reduce_sql(reducer, column)} as value, any_value(r.position) as position,
                   any_value(r.block) as block
            from runs r left join epochs e using (run_id)
            where r.study = ? group by r.run_id, r.seed, r.status
            order by position, r.run_id""",
        [study],
    ).fetchall()
    return in_study_order(
        [
            Run(
                run_id,
                seed,
                status,
                flat_config(config),
                None if value is None or not math.isfinite(value) else float(value),
                position,
                block,
            )
            for run_id, seed, status, config, value, position, block in rows
        ]
    )


def in_study_order(runs: list[Run]) -> list[Run]:
    """The order every analysis sees runs in, whatever order the store gave them: the
    study file's (so "the first dataset" is the first block's), then run id."""
    return sorted(runs, key=lambda r: (r.position, r.run_id))


def higher_is_better(metric: str) -> bool:
    return parse_metric(metric)[1].endswith("_acc")


def test_epoch_caution(metric: str, whose: str) -> str | None:
    """What a ``best_``/``max_``/``min_`` test metric reads: each run's best epoch on the test
    set, a choice made on test; None for any other metric."""
    reducer, column = parse_metric(metric)
    if reducer in ("best", "max", "min") and column.startswith("test_"):
        return (
            f"{metric} takes each {whose}'s best epoch on the test set; "
            f"final_{column} (its last epoch) reads nothing chosen on test"
        )
    return None


def usable(runs: list[Run], result: Result) -> list[Run]:
    """Finished runs with a value; the rest are reported in ``result.left_out``."""
    keep, dropped = [], {}
    for run in runs:
        if run.status != State.DONE:
            reason = run.status
        elif run.value is None:
            reason = f"no {result.metric} value"
        else:
            keep.append(run)
            continue
        dropped.setdefault(reason, []).append(run.run_id)
    for reason, ids in sorted(dropped.items()):
        result.left_out.append({"reason": reason, "runs": len(ids), "run_ids": sorted(ids)})
    return keep


def leave_out(result: Result, reason: str, runs: list[Run]) -> None:
    if runs:
        result.left_out.append(
            {"reason": reason, "runs": len(runs), "run_ids": sorted(r.run_id for r in runs)}
        )


def require_axes(analysis: str, study: str, axes: list[str], needed: list[str]) -> None:
    missing = [a for a in needed if a not in axes]
    if missing:
        raise OptlabError(
            f"analyze {analysis}: needs the study to vary {' and '.join(needed)}; study "
            f"{study!r} does not vary {', '.join(missing)} (it varies "
            f"{', '.join(axes) or 'nothing'})"
        )


# ---- groups -------------------------------------------------------------------------------


def groups(
    runs: list[Run], across: list[str], among: list[Run] | None = None
) -> dict[str, list[Run]]:
    """Runs grouped by everything in their config but the seed and ``across``; each group is
    labelled by what tells it apart from the others (``optimizer=adamw``). The labels are
    worked out ``among`` all the study's runs (finished or not) when given, so that a study
    run in parts labels its groups as the whole study will."""
    keyed = _keyed(runs, across)
    every = keyed if among is None else _keyed(among, across) | keyed
    labels = _labels(list(every))
    return {labels[key]: members for key, members in keyed.items()}


def not_yet(result: Result, kept: list[Run], runs: list[Run], across: list[str]) -> None:
    """Name the groups of the study with no usable run yet (a study run in parts)."""
    have = _keyed(kept, across)
    every = _keyed(runs, across)
    labels = _labels(list(every))
    missing = sorted((labels[k], len(every[k])) for k in every if k not in have)
    if missing and have:
        named = [f"{label} ({n} runs)" for label, n in missing[:NAMED]]
        if len(missing) > NAMED:
            rest = missing[NAMED:]
            named.append(f"{len(rest)} more groups ({sum(n for _, n in rest)} runs)")
        result.findings["not_yet"] = "no finished runs yet in " + "; ".join(named)


NAMED = 5  # groups named one by one in a finding; the rest are counted


def _keyed(runs: list[Run], across: list[str]) -> dict[str, list[Run]]:
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        rest = {k: v for k, v in run.config.items() if k not in across}
        keyed.setdefault(json.dumps(rest, sort_keys=True, default=str), []).append(run)
    return keyed


def _labels(keys: list[str]) -> dict[str, str]:
    configs = [json.loads(k) for k in keys]
    shown = [p for p in sorted({p for c in configs for p in c}) if _tells_apart(configs, p)]
    out: dict[str, str] = {}
    taken: set[str] = set()
    for key, cfg in zip(keys, configs, strict=True):
        label = ", ".join(f"{p}={_fmt(cfg.get(p))}" for p in shown) or "all runs"
        while label in taken:
            label += "'"
        taken.add(label)
        out[key] = label
    return out


def _tells_apart(configs: list[dict[str, Any]], path: str) -> bool:
    """Does ``path`` differ between groups? A plugin's parameter counts only where it differs
    between groups that use the same plugin (adam's lr is not shown against sgd's)."""
    slot, dot, _ = path.partition(".")
    by_plugin: dict[str, set[str]] = {}
    for c in configs:
        plugin = str(c.get(slot)) if dot else ""
        by_plugin.setdefault(plugin, set()).add(json.dumps(c.get(path), default=str))
    return any(len(v) > 1 for v in by_plugin.values()) or (
        not dot and len({json.dumps(c.get(path), default=str) for c in configs}) > 1
    )


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def matrix(runs: list[Run], param: str) -> tuple[list[Any], list[int], np.ndarray]:
    """(param values, seeds, seeds x values matrix of the metric; NaN where missing)."""
    values = sorted({r.get(param) for r in runs}, key=_order)
    seeds = sorted({r.seed for r in runs})
    m = np.full((len(seeds), len(values)), np.nan)
    for r in runs:
        m[seeds.index(r.seed), values.index(r.get(param))] = r.value
    return values, seeds, m


def _order(v: Any) -> tuple[int, Any]:
    return (0, v) if isinstance(v, int | float) else (1, str(v))


def argbest(mean: np.ndarray, higher: bool) -> int:
    filled = np.where(np.isnan(mean), -np.inf if higher else np.inf, mean)
    return int(np.argmax(filled) if higher else np.argmin(filled))


def flat_values(values: list[float]) -> bool:
    """No variation to correlate (to rounding: the values may be means minus their mean)."""
    return float(np.ptp(values)) <= 1e-12 * max(1.0, float(np.max(np.abs(values))))


def nanmean(m: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over seeds ignoring missing runs; an all-missing column stays NaN, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(m, axis=axis)


def resamples(n_seeds: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n_seeds, size=(RESAMPLES, n_seeds))


def best_per_resample(
    m: np.ndarray, higher: bool, rng: np.random.Generator, idx: np.ndarray | None = None
) -> np.ndarray:
    """Index of the best column of the seed-mean, for each bootstrap resample of the seeds
    (rows of ``m``); all resamples at once."""
    idx = resamples(m.shape[0], rng) if idx is None else idx
    means = nanmean(m[idx], axis=1)  # (resamples, values)
    filled = np.where(np.isnan(means), -np.inf if higher else np.inf, means)
    return np.argmax(filled, axis=1) if higher else np.argmin(filled, axis=1)


def optimum(runs: list[Run], param: str, higher: bool, rng: np.random.Generator) -> dict[str, Any]:
    """The value of ``param`` with the best mean metric over seeds, and a 95% percentile
    bootstrap interval from resampling seeds (each resample's own optimum)."""
    values, seeds, m = matrix(runs, param)
    if len(values) == 1:  # nothing to choose between: no optimum, whatever its metric
        return {
            "optimum": None,
            "metric_mean": float(nanmean(m)[0]),
            "seeds": len(seeds),
            "values_tried": 1,
            "ci_low": None,
            "ci_high": None,
            "at_edge": None,
            "note": f"not identifiable: one value tried ({_fmt(values[0])})",
        }
    best = argbest(nanmean(m), higher)
    row: dict[str, Any] = {
        "optimum": values[best],
        "metric_mean": float(nanmean(m)[best]),
        "seeds": len(seeds),
        "values_tried": len(values),
    }
    if len(seeds) > 1 and all(isinstance(v, int | float) for v in values):
        picks = np.asarray(values)[best_per_resample(m, higher, rng)]
        lo, hi = np.percentile(picks, [2.5, 97.5], method="inverted_cdf")
        row.update(ci_low=float(lo), ci_high=float(hi))
    else:
        row.update(ci_low=None, ci_high=None)
    row["at_edge"] = best in (0, len(values) - 1) and len(values) > 1
    return row


# ---- analyses -----------------------------------------------------------------------------
