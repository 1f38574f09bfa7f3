"""Planning: drop the runs the store already has, keep the order of the study."""

from __future__ import annotations

from optlab.states import RESULTS as FINAL
from optlab.states import State
from optlab.study.expand import RunSpec

# A diverged run is a result: the same config diverges again. So is a run successive
# halving stopped, unless the user asks it to go on (--no-early-stop).


def plan_runs(
    runs: list[RunSpec],
    states: dict[str, str],
    retry_failed: bool,
    early_stop: bool = True,
    together: dict[str, tuple[int, int]] | None = None,
) -> list[RunSpec]:
    """Runs still to do, seeds outermost so that a whole first replicate lands early;
    ``together`` places some runs elsewhere: (seed, position) to sort them by instead
    (the seeds of a configuration that is halved, side by side)."""
    skip = set(FINAL) if retry_failed else {*FINAL, State.FAILED}
    if not early_stop:
        skip.discard(State.STOPPED)
    todo = [r for r in runs if states.get(r.run_id, State.PENDING) not in skip]
    place = together or {}
    return sorted(todo, key=lambda r: (*place.get(r.run_id, (r.seed, r.position)), r.seed))
