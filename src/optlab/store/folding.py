"""Folding in what Slurm jobs did: the store stays the one truth, written by one writer at a
time, and the jobs never open it. Their workers journal every event beside the store (on the
shared filesystem); whichever optlab command opens the store next (`status`, `query`, the
page, the analyses, another `run`) writes the journals' new events first, in one short
transaction. Runs a live lease holds stay running; a run whose lease went stale (its job
died) becomes interrupted, and resumes wherever it is taken next.

Two commands folding at once: the store's file lock lets one write at a time, the other
waits briefly and finds nothing new (writing a journal again changes nothing). A store being
written for longer (another `optlab run` preparing) is not waited for: the reader answers
from what the store holds and says that the jobs' latest events are not in it yet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from optlab import leases
from optlab.errors import StoreBusy
from optlab.states import State
from optlab.store.opening import writing
from optlab.store.recovery import recover
from optlab.store.registration import states

ENDED = {State.DONE, State.DIVERGED, State.STOPPED, State.FAILED}
FOLDED = "folded"  # in a submission's folder: every run it planned has ended in the store


@dataclass(frozen=True)
class Folded:
    runs: int = 0  # runs whose journals added something
    busy: bool = False  # the store was being written: nothing folded this time
    open_submissions: int = 0
    error: str | None = None  # why nothing could be folded (a damaged store)


def open_submissions(store: Path) -> dict[str, list[str]]:
    """Submissions whose runs have not all ended in the store: name -> planned run ids."""
    out: dict[str, list[str]] = {}
    try:
        names = sorted(e.name for e in os.scandir(leases.submissions_dir(store)) if e.is_dir())
    except FileNotFoundError:
        return out
    for name in names:
        if (leases.submissions_dir(store) / name / FOLDED).exists():
            continue
        try:
            plan = json.loads(leases.plan_path(store, name).read_text())
        except (OSError, ValueError):
            continue  # being written by the submitting command
        out[name] = [entry["task"]["run_id"] for entry in plan["runs"]]
    return out


def fold(store: Path, timeout: float = 2.0) -> Folded:
    """Write what the open submissions' jobs journaled since the last fold."""
    submissions = open_submissions(store)
    if not submissions or not store.exists():
        return Folded(open_submissions=len(submissions))
    ids = sorted({i for runs in submissions.values() for i in runs})
    live = leases.live_ids(store)
    try:
        with writing(store, timeout=timeout) as con:
            folded = recover(con, store, ids, live=live)
            now = states(con, ids)
    except StoreBusy:
        return Folded(busy=True, open_submissions=len(submissions))
    left = 0
    for name, runs in submissions.items():
        if all(now.get(i) in ENDED for i in runs):
            (leases.submissions_dir(store) / name / FOLDED).touch()
        else:
            left += 1
    return Folded(len(folded), False, left)
