"""``sfo``: the samples (SFO) each schedule takes to bring the full gradient norm below
epsilon (seed 004), read from the ``reach_grad_norm`` view."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optlab.analysis.core import (
    Asked,
    Result,
    Run,
    flat_config,
    groups,
    in_study_order,
    leave_out,
    not_yet,
)
from optlab.analysis.results import probes_asked
from optlab.errors import OptlabError
from optlab.states import State


def read(con: Any, result: Result, asked: Asked) -> list[Run]:
    """Each run with, as its value, the samples it took to reach ``--epsilon`` (None: never);
    its lowest full gradient norm kept in ``asked.found``."""
    epsilon = asked.epsilon
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
        return []
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
    asked.found["minimum"] = {rid: mn for rid, _, _, _, _, mn, _ in rows}
    return runs


def answer(result: Result, runs: list[Run], axes: list[str], rng: Any, asked: Asked) -> None:
    """Per schedule: the mean samples to reach epsilon over the seeds that reached it."""
    from scipy import stats  # scipy: a second to import, so only when a test is run

    if "note" in result.findings:  # not answerable yet: read said why
        return
    epsilon, lowest = asked.epsilon, asked.found["minimum"]
    done = [r for r in runs if r.status == State.DONE]
    for status in sorted({r.status for r in runs} - {State.DONE}):
        leave_out(result, status, [r for r in runs if r.status == status])
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
                (lowest[r.run_id] for r in members if lowest[r.run_id] is not None), default=None
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
