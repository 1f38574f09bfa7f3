"""Planning: drop the runs the store already has, keep the order of the study."""

from __future__ import annotations

from optlab.study.expand import RunSpec

FINAL = ("done", "diverged")  # a diverged run is a result: the same config diverges again


def plan_runs(runs: list[RunSpec], states: dict[str, str], retry_failed: bool) -> list[RunSpec]:
    """Runs still to do, seeds outermost so that a whole first replicate lands early."""
    skip = set(FINAL) if retry_failed else {*FINAL, "failed"}
    todo = [r for r in runs if states.get(r.run_id, "pending") not in skip]
    return sorted(todo, key=lambda r: (r.seed, r.position))
