"""What the coordinator does for halving and final runs while a study runs.

:class:`Tuning` sees every event the coordinator receives. A run paused at a rung is
decided by :class:`~optlab.execution.halving.Halving`; each decision is appended to the
run's journal (fsynced) before it reaches the store, and a run that goes on is put at the
front of the queue to resume from its checkpoint at the rung. When a run of a block with
``final`` ends, the queue is held open until the store has been asked (in the coordinator's
next write) whether a group's search is over; its final runs are then recorded in the
store and queued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from optlab.events import open_journal, write_events
from optlab.execution import finals
from optlab.execution.executors.work import WorkQueue
from optlab.execution.halving import STOP, Halving
from optlab.states import Event, State
from optlab.store import core as st
from optlab.store import records
from optlab.study.expand import BlockPlan, RunSpec

ENDINGS = {Event.FINISHED: State.DONE, Event.FAILED: State.FAILED, Event.DIVERGED: State.DIVERGED}


class Tuning:
    def __init__(
        self,
        store: Path,
        halving: Halving | None,
        plans: list[BlockPlan],
        work: WorkQueue,
        resume: dict[str, dict[str, Any]],
        checkpoint_root: Path,
        states: dict[str, str] | None = None,
        coming: set[str] | None = None,
    ):
        self.store, self.halving, self.work = store, halving, work
        self.resume, self.checkpoint_root = resume, checkpoint_root
        self.with_final = [p for p in plans if p.final is not None]
        self.known = {r.run_id for p in plans for r in p.runs}
        # Per group of a block with final: its runs not ended yet. When the last ends, the
        # queue is held until a write that holds its events has asked the store for the
        # group's final runs (``due`` until a write takes it, ``asking`` in that write).
        states, coming = states or {}, coming or set()
        self.open: dict[tuple, set[str]] = {}
        self.group_key: dict[str, tuple] = {}
        for plan in self.with_final:
            for key, members in finals.groups(plan).items():
                self.open[key] = {
                    r.run_id
                    for r in members
                    if r.run_id in coming or states.get(r.run_id) not in finals.ENDED
                }
                self.group_key.update((r.run_id, key) for r in members)
        self.due: set[tuple] = set()
        self.asking: set[tuple] = set()
        self.holding = False
        self.added: list[RunSpec] = []  # final runs recorded in the last write

    def stop_at(self, run_id: str) -> int | None:
        return self.halving.stop_at(run_id) if self.halving else None

    def see(self, event: dict[str, Any]) -> tuple[list[dict[str, Any]], list[RunSpec]]:
        """The decision events ``event`` brings (journaled) and the runs to queue first."""
        kind, run_id = event["type"], event.get("run_id")
        decisions: list[Any] = []
        again: list[RunSpec] = []
        if self.halving:
            if kind == Event.EPOCH:
                self.halving.epoch(run_id, event["epoch"], event)
            elif kind == Event.PAUSED and run_id in self.halving.unit_of:
                decisions, again = self.halving.reached(run_id, event["epoch"])
            elif kind in ENDINGS:
                decisions, again = self.halving.ended(run_id, ENDINGS[kind])
        events = [self._journaled(d.event(), event) for d in decisions]
        for ev in events:
            if ev["decision"] == "continue":
                spec = self.halving.specs[ev["run_id"]]
                self.resume.setdefault(spec.run_id, {})["resume_upto"] = ev["epoch"]
                if spec not in again:
                    again.append(spec)
        if kind in ENDINGS:
            self._ended(run_id)
        for ev in events:
            if ev["decision"] == STOP:
                self._ended(ev["run_id"])
        for spec in again:  # a run that goes on is open (one stopped before reopens its group)
            if spec.run_id in self.group_key:
                self.open[self.group_key[spec.run_id]].add(spec.run_id)
        if again:
            self.work.push_front(again)
        return events, again

    def _journaled(self, decision: dict[str, Any], cause: dict[str, Any]) -> dict[str, Any]:
        event = {**decision, "time": time.time()}
        if decision["decision"] == STOP and cause.get("elapsed") is not None:
            event["elapsed"] = cause["elapsed"]
        path = st.journal_path(self.store, event["run_id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_journal(path, fresh=False, cut=True) as f:
            write_events(f, [event])
        return event

    def _ended(self, run_id: str | None) -> None:
        key = self.group_key.get(run_id or "")
        if key is None or run_id not in self.open[key]:
            return
        self.open[key].discard(run_id)
        if not self.open[key]:  # its search is over
            self.due.add(key)
            if not self.holding:
                self.holding = True
                self.work.hold()

    def taking_batch(self) -> None:
        """The coordinator takes its batch to write: the write asks for what came so far."""
        self.asking, self.due = self.due, set()

    def write_failed(self) -> None:
        self.due, self.asking = self.due | self.asking, set()

    # ---- in the coordinator's write (a thread, holding the store) ------------------------
    def ask_store(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record the final runs of the groups whose search is over."""
        if not self.asking:
            return
        new: list[RunSpec] = []
        changed: list[tuple[str, str]] = []
        for plan in self.with_final:
            groups = {k for k in self.asking if k[0] == plan.name}
            extra = finals.final_plan(plan, finals.selected(con, plan, groups)) if groups else None
            if extra is not None:
                new += [r for r in extra.runs if r.run_id not in self.known]
                study = plan.runs[0].study
                _record_axes(con, study, extra)
                finals.drop_replaced(con, study, plan, extra)
                changed.append((study, extra.name))
        if new:
            if st.add_runs(con, new):
                st.refresh_runs_view(con)
            dirs = {r.run_id: str(self.checkpoint_root / r.run_id) for r in new}
            st.set_checkpoint_dirs(con, dirs)
        for study, block in changed:  # the record `rebuild` reads holds them too
            axes = json.loads(
                con.execute("select axes from studies where study = ?", [study]).fetchone()[0]
                or "{}"
            )
            records.record_block(con, self.store, study, block, axes.get(block, {}))
        self.added = new

    # ---- back in the event loop, after a write -------------------------------------------
    def after_write(self, grow: Callable[[list[RunSpec]], None]) -> None:
        new, self.added, self.asking = self.added, [], set()
        for run in new:
            self.known.add(run.run_id)
            self.resume[run.run_id] = {"checkpoint_dir": str(self.checkpoint_root / run.run_id)}
        if new:
            grow(new)
            self.work.push_back(new)
        if self.holding and not self.due:  # no search ended since the batch was taken
            self.holding = False
            self.work.unhold()


def _record_axes(con: duckdb.DuckDBPyConnection, study: str, plan: BlockPlan) -> None:
    """The study's axes gain the final block's values (those of earlier groups kept)."""
    row = con.execute("select axes from studies where study = ?", [study]).fetchone()
    if row is None:
        return
    axes = json.loads(row[0]) if row[0] else {}
    known = axes.setdefault(plan.name, {})
    for path, values in plan.axes.items():
        have = known.setdefault(path, [])
        have += [v for v in values if v not in have]
    con.execute("update studies set axes = ? where study = ?", [json.dumps(axes), study])
