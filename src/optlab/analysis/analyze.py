"""The table of analyses: the seed projects' questions answered with statistics, one row
(:class:`~optlab.analysis.core.Analysis`) each, read by ``optlab analyze``, ``Store.analyze``
and the report.

Every analysis reads one row per run (the run's reduced metric, its seed and its resolved
config) with a single SQL query, then works on those few rows with numpy and scipy, with
the store closed. A group is a set of runs whose configs agree on everything but the seed
and the axes an analysis looks across. Runs that did not finish (failed, diverged,
pending, interrupted) are left out, and each result says which and why.

To add an analysis: its answer function in a module of this package (what the analyses
share is in :mod:`optlab.analysis.core`) and its row in ``ANALYSES`` below.
"""

from __future__ import annotations

import tomllib
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from optlab.analysis import budget, compare, optima, profile, sfo, slopes, warmup
from optlab.analysis.core import (
    BATCH,
    LR,
    REGIME,
    WARMUP,
    WD,
    Analysis,
    Asked,
    Result,
    Run,
    StudyFacts,
    in_study_order,
    load,
    numeric_axes,
    require_axes,
)
from optlab.analysis.results import open_study, parse_metric, probes_asked
from optlab.errors import OptlabError
from optlab.states import State
from optlab.store.core import matrix_runs
from optlab.study.schema import FINAL_SUFFIX, AnalysisSettings


def _read_metric(con: Any, result: Result, asked: Asked) -> list[Run]:
    """Each run's reduced metric (the rows most analyses read)."""
    return load(con, result.study, result.metric)


def _read_warmup(con: Any, result: Result, asked: Asked) -> list[Run]:
    """Each run valued by what selection reads (validation where there is a split), and
    the study's ``[analysis.warmup]`` settings, from the source kept in the store."""
    (source,) = con.execute("select source from studies where study = ?", [result.study]).fetchone()
    raw = tomllib.loads(source or "").get("analysis", {})
    asked.found["settings"] = AnalysisSettings.model_validate(raw)
    return optima.read_selecting(con, result, asked)


ANALYSES: dict[str, Analysis] = {
    row.name: row
    for row in (
        Analysis(
            "optimal",
            "a hyperparameter's best value per group",
            optima.optimal,
            fits=lambda facts: bool(numeric_axes(facts.axes)),
            read=optima.read_selecting,
        ),
        Analysis(
            "lr-wd",
            "slope of log optimal LR against log WD",
            slopes.lr_wd,
            axes=(LR, WD),
            read=optima.read_selecting,
        ),
        Analysis(
            "scaling",
            "slope of log optimal LR against log batch size",
            slopes.scaling,
            axes=(BATCH,),  # a block whose LR follows lr_scaling: the rule is checked
            read=optima.read_selecting,
        ),
        Analysis(
            "warmup",
            "seed 002's H1-H4",
            warmup.analyze,
            axes=(WARMUP, REGIME),
            read=_read_warmup,
        ),
        Analysis(
            "sfo",
            "samples to reach a full gradient norm",
            sfo.answer,
            fits=lambda facts: "full_grad_norm" in facts.probes,
            read=sfo.read,
        ),
        Analysis(
            "ranking",
            "optimizers by their best cell",
            optima.ranking,
            fits=lambda facts: facts.optimizers > 1,
            read=optima.read_selecting,
        ),
        Analysis(
            "budget",
            "each optimizer's expected best over k trials, Dodge et al.",
            budget.answer,
            fits=lambda facts: facts.optimizers > 1 and facts.validated,
            read=budget.read,
        ),
        Analysis(
            "compare",
            "final runs' metric per optimizer, 95% intervals, Welch's t-test",
            compare.answer,
            fits=lambda facts: facts.confirmed,
            read=compare.read,
        ),
        Analysis(
            "profile",
            "time to --target per workload, and performance profiles",
            profile.answer,
            fits=lambda facts: False,  # it needs a target: not in the report
            read=profile.read,
        ),
    )
}


def analysis(name: str) -> Analysis:
    """The row of analysis ``name``."""
    try:
        return ANALYSES[name]
    except KeyError:
        raise OptlabError(
            f"analysis {name!r}: not an analysis; use one of {', '.join(ANALYSES)}"
        ) from None


def run_analysis(
    store: Path,
    name: str,
    study: str | None,
    metric: str,
    param: str | None = None,
    epsilon: float | None = None,
    seed: int = 0,
    by: str | None = None,
    target: str | None = None,
    time: str | None = None,
    order: str | None = None,
    margin: float | None = None,
) -> Result:
    row = analysis(name)
    parse_metric(metric)
    if margin is not None and not margin > 0:
        raise OptlabError(f"--margin {margin:g}: must be above 0 (in the metric's units)")
    asked = Asked(param, epsilon, by, target, time, order, margin)
    with open_study(store, study) as (con, study, axes):
        result = Result(name, study, metric)
        require_axes(name, study, axes, list(row.axes))
        (count,) = con.execute("select count(*) from runs where study = ?", [study]).fetchone()
        if not count:
            raise OptlabError(f"study {study!r} has no runs in {store}")
        # The study file's order, whatever order the store gave them.
        runs = in_study_order((row.read or _read_metric)(con, result, asked))
        size = matrix_runs(con, study)
        result.matrix = size if size is not None and size > count else None
    with warnings.catch_warnings():
        # scipy warns on identical samples (a zero-variance cell); the p-value says enough.
        warnings.simplefilter("ignore", RuntimeWarning)
        row.answer(result, runs, axes, np.random.default_rng(seed), asked)
    _note_unfinished(result, [r.status for r in runs])
    _note_part(result, result.matrix, count)
    return result


def study_facts(con: Any, study: str, axes: list[str]) -> StudyFacts:
    (optimizers,) = con.execute(
        "select count(distinct optimizer) from runs where study = ?", [study]
    ).fetchone()
    probed = {
        p
        for (p,) in con.execute(
            "select distinct p.probe from probes p join memberships m using (run_id) "
            "where m.study = ?",
            [study],
        ).fetchall()
    }
    (validated,) = con.execute(
        "select count(*) > 0 from epochs e join memberships m using (run_id) "
        "where m.study = ? and e.val_acc is not null",
        [study],
    ).fetchone()
    asked = set(probes_asked(con, study))
    (confirmed,) = con.execute(
        "select count(*) > 0 from memberships where study = ? and ends_with(block, ?)",
        [study, FINAL_SUFFIX],
    ).fetchone()
    return StudyFacts(list(axes), optimizers, probed | asked, bool(validated), bool(confirmed))


def analyses_for(facts: StudyFacts) -> list[str]:
    """The analyses the report shows for a study: those whose rows fit it."""
    return [name for name, row in ANALYSES.items() if row.shown_for(facts)]


def _note_unfinished(result: Result, statuses: list[str]) -> None:
    """Say so when no run of the study has finished: every table is empty, and why."""
    if not statuses or State.DONE in statuses or "note" in result.findings:
        return
    counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(statuses).items()))
    waiting = {State.PENDING, State.RUNNING, State.INTERRUPTED} & set(statuses)
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
