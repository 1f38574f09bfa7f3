"""Successive halving: a block's ``early_stop`` stops its weak configurations at rungs.

Rungs lie at ``min_epochs x reduction^k`` epochs (below the run's epochs). A run trains to
its next rung, checkpoints there and is handed back (a ``paused`` event); the coordinator
asks :class:`Halving` what becomes of it. The unit decided is a *configuration*: the seeds
of one cell, whose value at a rung is the mean of its seeds' metric there (a seed that
diverged before the rung makes it the worst); a configuration arrives at a rung when each
of its seeds has reached it or ended. The configurations compared are those of its
*group*: its block, split by the config paths ``group_by`` names.

- ``asha`` (Li et al. 2020, asynchronous successive halving): a configuration that arrives
  at a rung goes on if it ranks among the best ``max(1, n // reduction)`` of the ``n``
  configurations of its group that have arrived there so far, itself included. So the
  stops depend on the order in which configurations arrive (the same order gives the same
  stops), and the first to arrive always go on.
- ``sha`` (plain successive halving): every configuration waits at the rung until all of
  its group's still in the race have arrived; then the best ``max(1, n // reduction)``
  go on. The stops do not depend on the order runs finish.

Ties rank by the configuration's key (a hash of its config), never by arrival. Decisions
are final within a session and journaled (the coordinator appends them to each run's
journal), so recovery and ``optlab rebuild`` give the same stops. A configuration stopped
in an earlier session is looked at again when a new configuration arrives at its rung (the
study grew): if it now ranks among the best, it goes on from its checkpoint there.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb

from optlab.states import Event, State
from optlab.study import paths
from optlab.study.expand import BlockPlan, RunSpec, group_paths, identity_json
from optlab.study.schema import EarlyStop

CONTINUE, STOP, WAIT = "continue", "stop", "wait"


def rungs(min_epochs: int, reduction: int, epochs: int) -> list[int]:
    """The rung epochs below ``epochs``: min_epochs x reduction^k."""
    out, at = [], min_epochs
    while at < epochs:
        out.append(at)
        at *= reduction
    return out


def unit_key(config: dict[str, Any]) -> str:
    """A configuration's key: the same for all its seeds, and how ties are broken."""
    return hashlib.sha256(identity_json(config).encode()).hexdigest()[:12]


def group_of(plan_name: str, config: dict[str, Any], by: list[str]) -> tuple:
    """A run's group: its block and its values of the ``group_by`` paths."""

    def value(path: str) -> str:
        try:
            return repr(paths.get(config, path))
        except (KeyError, TypeError):
            return "None"  # a plugin without that parameter

    return (plan_name, *(value(p) for p in group_paths(by)))


@dataclass
class Unit:
    key: str
    group: tuple
    rule: EarlyStop
    runs: list[str]
    rungs: list[int]
    decided: dict[int, str] = field(default_factory=dict)  # rung -> continue / stop
    earlier: set[int] = field(default_factory=set)  # rungs stopped at in an earlier session


@dataclass
class Decision:
    run_id: str
    epoch: int
    decision: str
    value: float | None
    rank: int | None
    of: int | None
    keep: int | None
    rule: EarlyStop

    def event(self) -> dict[str, Any]:
        metric = self.rule.metric
        if self.decision == WAIT:
            reason = f"waits at epoch {self.epoch} for the rest of its group (sha)"
        else:
            verb = "goes on" if self.decision == CONTINUE else "stopped"
            reason = (
                f"{verb} at epoch {self.epoch} ({self.rule.kind}): {metric} "
                f"{_shown(self.value)} ranks {self.rank} of {self.of}, the best {self.keep} "
                "go on"
            )
        return {
            "type": Event.RUNG,
            "run_id": self.run_id,
            "epoch": self.epoch,
            "decision": self.decision,
            "metric": metric,
            "value": self.value if self.value is not None and math.isfinite(self.value) else None,
            "rank": self.rank,
            "of": self.of,
            "keep": self.keep,
            "rule": self.rule.kind,
            "reason": reason,
        }


def _shown(value: float | None) -> str:
    return "none (a seed diverged)" if value is None or not math.isfinite(value) else f"{value:.4g}"


class Board:
    """The configurations of a group that have arrived at one rung, kept sorted (best
    first; ties by key): a rank is a binary search, not a sort."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, str]] = []  # (-value, key), ascending
        self.units: dict[str, Unit] = {}
        self.values: dict[str, float] = {}
        self.stopped_before: set[str] | None = None  # stopped here in an earlier session

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, unit: Unit, value: float) -> None:
        bisect.insort(self.rows, (-value, unit.key))
        self.units[unit.key], self.values[unit.key] = unit, value

    def rank(self, unit: Unit) -> int:
        return bisect.bisect_left(self.rows, (-self.values[unit.key], unit.key)) + 1

    def ranked(self) -> list[tuple[Unit, float]]:
        return [(self.units[k], -v) for v, k in self.rows]

    def earlier_best(self, rung: int, keep: int) -> list[Unit]:
        """Those stopped here in an earlier session that rank among the best ``keep``."""
        if self.stopped_before is None:
            self.stopped_before = {k for k, u in self.units.items() if rung in u.earlier}
        best = [self.units[k] for k in self.stopped_before]
        return sorted((u for u in best if self.rank(u) <= keep), key=self.rank)


class Halving:
    """The halving state of a session's early-stopping blocks (see the module's text).

    ``coming``: the runs this session will train (its plan); ``progress``: from the store,
    per run, its state, its last epoch and its values at rungs; ``decided``: the store's
    rung decisions."""

    def __init__(
        self,
        plans: list[BlockPlan],
        coming: Iterable[str],
        states: dict[str, str],
        last_epoch: dict[str, int],
        values: dict[tuple[str, int], float | None],
        decided: dict[tuple[str, int], str],
    ):
        self.units: dict[str, Unit] = {}
        self.unit_of: dict[str, str] = {}
        self.specs: dict[str, RunSpec] = {}
        self.coming = set(coming)
        self.states = dict(states)
        self.last = dict(last_epoch)
        self.values = dict(values)
        self.paused: dict[str, int] = {}  # run -> the rung it waits at, this session
        self.arrived: set[tuple[str, int]] = set()  # (run, rung): paused there this session
        self.by_group: dict[tuple, list[Unit]] = {}
        self.boards: dict[tuple[tuple, int], Board] = {}  # (group, rung) -> who arrived
        self.waits: dict[tuple[tuple, int], deque[Unit]] = {}  # (group, rung): sha's wait
        for plan in plans:
            if plan.early_stop is None:
                continue
            rule = plan.early_stop
            for run in plan.runs:
                key = unit_key(run.config)
                unit = self.units.get(key)
                if unit is None:
                    unit = self.units[key] = Unit(
                        key,
                        group_of(plan.name, run.config, rule.group_by),
                        rule,
                        [],
                        rungs(rule.min_epochs, rule.reduction, run.config["epochs"]),
                    )
                    self.by_group.setdefault(unit.group, []).append(unit)
                unit.runs.append(run.run_id)
                self.unit_of[run.run_id] = key
                self.specs[run.run_id] = run
        for (run_id, epoch), decision in decided.items():
            unit = self.units.get(self.unit_of.get(run_id, ""))
            if unit is not None and decision in (CONTINUE, STOP):
                unit.decided[epoch] = decision
                if decision == STOP:
                    unit.earlier.add(epoch)

    def __bool__(self) -> bool:
        return bool(self.units)

    # ---- what a run is told ----------------------------------------------------------
    def stop_at(self, run_id: str) -> int | None:
        """The rung where ``run_id`` must pause next: its first rung not yet passed."""
        unit = self.units.get(self.unit_of.get(run_id, ""))
        if unit is None:
            return None
        for rung in unit.rungs:
            if unit.decided.get(rung) != CONTINUE:
                return rung
        return None

    # ---- what the coordinator reports --------------------------------------------------
    def epoch(self, run_id: str, epoch: int, row: dict[str, Any]) -> None:
        unit = self.units.get(self.unit_of.get(run_id, ""))
        if unit is None:
            return
        self.last[run_id] = epoch
        if epoch in unit.rungs:
            value = row.get(unit.rule.metric)
            self.values[(run_id, epoch)] = float(value) if value is not None else None

    def ended(self, run_id: str, state: str) -> tuple[list[Decision], list[RunSpec]]:
        """A run ended (finished, diverged, failed): its configuration may now arrive."""
        self.states[run_id] = state
        self.paused.pop(run_id, None)
        key = self.unit_of.get(run_id)
        if key is None or state == State.DONE:
            return [], []
        unit = self.units[key]
        rung = self.stop_at(run_id)
        return self._arrive(unit, rung) if rung is not None else ([], [])

    def reached(self, run_id: str, epoch: int) -> tuple[list[Decision], list[RunSpec]]:
        """``run_id`` paused at rung ``epoch``: the decisions this makes (for its runs, and
        in sync mode for its group's) and the runs to train on (stopped ones that go on)."""
        self.paused[run_id] = epoch
        self.arrived.add((run_id, epoch))
        self.last[run_id] = epoch
        unit = self.units[self.unit_of[run_id]]
        return self._arrive(unit, epoch)

    # ---- the rule ----------------------------------------------------------------------
    def _settled(self, unit: Unit, run_id: str, rung: int) -> bool:
        """Whether ``run_id`` is where it will be at ``rung``: paused there in this session
        (its row alone is not enough: its pause may still be on its way), past it by a
        decision (in an earlier session: it resumes beyond), ended, or not run in this
        session (what the store has of it is all there is)."""
        if (run_id, rung) in self.arrived:
            return True
        if rung in unit.decided and (run_id, rung) in self.values:
            return True
        return (
            self.states.get(run_id) in (State.DIVERGED, State.FAILED) or run_id not in self.coming
        )

    def value(self, unit: Unit, rung: int) -> float | None:
        """The configuration's value at ``rung`` (better is larger: a loss is negated);
        None until it has arrived; -inf when a seed diverged before it."""
        if not all(self._settled(unit, r, rung) for r in unit.runs):
            return None
        seen = [self.values[(r, rung)] for r in unit.runs if (r, rung) in self.values]
        if not seen:
            return None
        diverged = any(
            self.states.get(r) == State.DIVERGED and (r, rung) not in self.values for r in unit.runs
        )
        if diverged or any(v is None or not math.isfinite(v) for v in seen):
            return -math.inf
        mean = sum(seen) / len(seen)  # type: ignore[arg-type]
        return mean if unit.rule.mode == "max" else -mean

    def _board(self, group: tuple, rung: int) -> Board:
        """The group's configurations that have arrived at ``rung``, best first; made
        when the rung is first asked about (with what the store had), then kept."""
        board = self.boards.get((group, rung))
        if board is None:
            board = self.boards[(group, rung)] = Board()
            for u in self.by_group[group]:
                if rung in u.rungs and (v := self.value(u, rung)) is not None:
                    board.add(u, v)
        return board

    def _still_in(self, unit: Unit, rung: int) -> bool:
        """Whether ``unit`` may yet arrive at ``rung``: not stopped before it, and a run of
        it still to come there."""
        if any(unit.decided.get(r) == STOP for r in unit.rungs if r < rung):
            return False
        return any(
            (r, rung) in self.values
            or (r in self.coming and self.states.get(r) not in (State.DIVERGED, State.FAILED))
            for r in unit.runs
        )

    def _waiting(self, group: tuple, rung: int) -> bool:
        """Whether a configuration of the group may still arrive at ``rung`` (sha waits for
        it). The group's configurations are checked in a fixed order and dropped once they
        have arrived or cannot: each arrival costs little however large the group."""
        queue = self.waits.get((group, rung))
        if queue is None:
            queue = self.waits[(group, rung)] = deque(
                u for u in self.by_group[group] if rung in u.rungs
            )
        while queue and (
            self.value(queue[0], rung) is not None or not self._still_in(queue[0], rung)
        ):
            queue.popleft()
        return bool(queue)

    def _arrive(self, unit: Unit, rung: int) -> tuple[list[Decision], list[RunSpec]]:
        value = self.value(unit, rung)
        if value is None and unit.rule.kind != "sha":
            return [], []  # its other seeds are still on their way
        board = self._board(unit.group, rung)
        if value is not None and unit.key not in board.units:
            board.add(unit, value)
        if unit.rule.kind == "sha":
            # The last one sha waited for may be one that never arrives (all its seeds
            # failed or diverged before the rung): the rung is complete all the same.
            if self._waiting(unit.group, rung) or not board:
                wait = value is not None
                return (self._decide(unit, rung, WAIT, None, None, None) if wait else []), []
            todo = [u for u, _ in board.ranked() if u.decided.get(rung) != CONTINUE]
        else:  # asha: this one, and those stopped here before that now rank among the best
            keep = max(1, len(board) // unit.rule.reduction)
            todo = [unit] + [u for u in board.earlier_best(rung, keep) if u is not unit]
        return self._verdicts(unit, rung, board, todo)

    def _verdicts(
        self, unit: Unit, rung: int, board: Board, todo: list[Unit]
    ) -> tuple[list[Decision], list[RunSpec]]:
        keep = max(1, len(board) // unit.rule.reduction)
        decisions: list[Decision] = []
        again: list[RunSpec] = []
        for u in todo:
            rank = board.rank(u)
            verdict = CONTINUE if rank <= keep else STOP
            if rung in u.earlier:  # stopped here in an earlier session
                if verdict == STOP:  # and still not among the best: a seed run again
                    decisions += self._decide(u, rung, STOP, rank, len(board), keep)
                    continue  # (--retry-failed) that reaches the rung stops too
                u.earlier.discard(rung)
                if board.stopped_before is not None:
                    board.stopped_before.discard(u.key)
                again += [self.specs[r] for r in u.runs if self.states.get(r) == State.STOPPED]
                for r in u.rungs:  # it may now arrive at later rungs: sha waits for it
                    if r > rung:
                        self.waits.pop((u.group, r), None)
            elif u.decided.get(rung) == STOP:
                continue  # decided in this session: final
            u.decided[rung] = verdict
            decisions += self._decide(u, rung, verdict, rank, len(board), keep)
        return decisions, again

    def _decide(
        self,
        unit: Unit,
        rung: int,
        verdict: str,
        rank: int | None,
        of: int | None,
        keep: int | None,
    ) -> list[Decision]:
        """The decision for each of the unit's runs waiting at ``rung``: paused here, and
        when it goes on, those stopped here before."""
        value = self.value(unit, rung)
        shown = None if value is None else (value if unit.rule.mode == "max" else -value)
        out = []
        for run_id in unit.runs:
            waiting = self.paused.get(run_id) == rung or (
                verdict == CONTINUE
                and self.states.get(run_id) == State.STOPPED
                and self.last.get(run_id) == rung
            )
            if not waiting:
                continue
            out.append(Decision(run_id, rung, verdict, shown, rank, of, keep, unit.rule))
            if verdict != WAIT:
                self.paused.pop(run_id, None)
                self.states[run_id] = State.STOPPED if verdict == STOP else State.RUNNING
        return out


def load(con: duckdb.DuckDBPyConnection, plans: list[BlockPlan], coming: Iterable[str]) -> Halving:
    """The halving state of ``plans`` from the store: states, last epochs, values at rungs
    and decisions of the runs of its early-stopping blocks."""
    ids = [r.run_id for p in plans if p.early_stop is not None for r in p.runs]
    if not ids:
        return Halving(plans, coming, {}, {}, {}, {})

    def rows(sql: str, *more: Any) -> list[tuple]:
        return con.execute(sql, [ids, *more]).fetchall()

    among = "run_id in (select unnest($1::varchar[]))"
    states = dict(rows(f"select run_id, status from run_state where {among}"))
    decided = {
        (r, e): d for r, e, d in rows(f"select run_id, epoch, decision from rungs where {among}")
    }
    halving = Halving(plans, coming, states, {}, {}, decided)
    halving.last = dict(rows(f"select run_id, max(epoch) from epochs where {among} group by 1"))
    # Only the rows at rung epochs: a study's epochs may be millions of rows.
    at = sorted({e for unit in halving.units.values() for e in unit.rungs})
    metrics = sorted({u.rule.metric for u in halving.units.values()})
    for run_id, epoch, *values in rows(
        f"select run_id, epoch, {', '.join(metrics)} from epochs where {among} "
        "and epoch in (select unnest($2::integer[]))",
        at,
    ):
        unit = halving.units[halving.unit_of[run_id]]
        if epoch in unit.rungs:  # the run's own rungs
            halving.values[(run_id, epoch)] = values[metrics.index(unit.rule.metric)]
    return halving
