"""`optlab status`: per study, counts by state, progress and ETA, the failed runs, and where
each unfinished run would resume.

Whether a study is running comes from its writer's liveness (the lock file's pid, host and
heartbeat; see :mod:`optlab.store.liveness`), never from the states a dead process left behind:
runs still marked running by a writer that is gone are shown as interrupted.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optlab import leases
from optlab.errors import OptlabError
from optlab.locations import resolve, roots
from optlab.states import ENDED, State
from optlab.store.core import STATES, journal_progress, matrix_runs, reading
from optlab.store.liveness import LIVE_SECONDS, Writer, pid_alive, read_writer
from optlab.training.checkpoint import newest_intact


@dataclass
class StudyStatus:
    study: str
    counts: dict[str, int]
    active_workers: int = 0
    eta_seconds: float | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[dict[str, Any]] = field(default_factory=list)
    gone: str | None = None  # the writer that left runs marked running, when it is gone
    executor: str | None = None  # of the live session
    nodes: dict[str, int] = field(default_factory=dict)  # node -> slots running there now
    matrix: int | None = None  # the study file's runs, when only a part of them was run
    epochs_total: int = 0  # over the study's runs
    epochs_done: int = 0  # an ended run (done, failed, diverged, stopped) counts all its epochs
    # runs a gone writer left that its journals show ended: run id -> (state, epochs)
    ended: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def progress(self) -> float | None:
        """The share of the study's epochs behind it (what its ETA counts too)."""
        return self.epochs_done / self.epochs_total if self.epochs_total else None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return sum(self.counts[s] for s in ENDED)


def study_status(store: Path, study: str | None = None) -> list[StudyStatus]:
    writer = read_writer(store)
    with reading(store) as con:
        names = [s for (s,) in con.execute("select study from studies order by study").fetchall()]
        if study is not None and study not in names:
            listed = ", ".join(names) or "(none yet)"
            raise OptlabError(f"no study {study!r} in {store}; studies: {listed}")
        out = []
        for name in [study] if study else names:
            out.append(_one(con, store, name, writer))
    return out


def _session_alive(session: tuple, writer: Writer | None, now: float) -> bool:
    session_id, pid, host, heartbeat = session
    if writer is not None and writer.session == session_id:
        return writer.alive(now)
    if host == socket.gethostname() and not pid_alive(pid):
        return False
    return heartbeat is not None and now - heartbeat < LIVE_SECONDS


def _one(con: Any, store: Path, name: str, writer: Writer | None) -> StudyStatus:
    counts = dict.fromkeys(STATES, 0)
    for status, n in con.execute(
        "select status, count(*) from runs where study = ? group by status", [name]
    ).fetchall():
        counts[status] = n
    result = StudyStatus(name, counts)
    total, done = con.execute(
        "select sum(r.epochs), sum(case when r.status in ('done', 'failed', 'diverged', "
        "'stopped') then r.epochs else least(r.epochs, (select count(*) from epochs e "
        "where e.run_id = r.run_id)) end) from runs r where r.study = ?",
        [name],
    ).fetchone()
    result.epochs_total, result.epochs_done = int(total or 0), int(done or 0)
    matrix = matrix_runs(con, name)
    result.matrix = matrix if matrix is not None and matrix > result.total else None
    now = time.time()
    columns = {
        c
        for (c,) in con.execute(
            "select column_name from information_schema.columns where table_name = 'sessions'"
        ).fetchall()
    }
    where = "executor, nodes" if "nodes" in columns else "null, null"  # an older store
    sessions = con.execute(
        f"select session_id, pid, hostname, epoch(heartbeat_at), workers, {where} "
        "from sessions where study = ? and ended_at is null order by started_at",
        [name],
    ).fetchall()
    live = [s for s in sessions if _session_alive(s[:4], writer, now)]
    result.active_workers = sum(s[4] or 0 for s in live)
    for s in live:
        result.executor = s[5] or "local"
        for node, slots in json.loads(s[6] or "{}").items():
            result.nodes[node] = result.nodes.get(node, 0) + slots
    cut: dict[str, tuple[int, int]] = {}
    ended: dict[str, State] = {}
    if sessions and not live:
        _, pid, host, heartbeat = sessions[-1][:4]
        ago = f", last heartbeat {_ago(now - heartbeat)} ago" if heartbeat else ""
        cut, ended = _left_behind(con, store, result)
        if counts[State.INTERRUPTED]:
            result.gone = f"pid {pid} on {host}{ago}"
    if live:
        result.eta_seconds = _eta(con, name, result.active_workers)
    rows = con.execute(
        "select run_id, status, seed, axes, error, log_path, checkpoint_epoch, epochs, "
        "(select count(*) from epochs e where e.run_id = r.run_id), checkpoint_dir from runs r "
        "where study = ? and status in ('pending', 'running', 'interrupted', 'failed', "
        "'diverged') "
        "order by position",
        [name],
    ).fetchall()
    here = roots(store)
    for run_id, status, seed, axes, error, log, ckpt, epochs, done, folder in rows:
        if run_id in ended:
            status = ended[run_id]
            result.ended[run_id] = (status, epochs)
            if status not in (State.FAILED, State.DIVERGED):
                continue  # a result: neither a problem nor unfinished
        elif run_id in cut:
            status = State.INTERRUPTED
            done, ckpt = max(done, cut[run_id][0]), max(ckpt or 0, cut[run_id][1])
        elif status == State.PENDING:
            continue
        if ckpt and folder and status != State.RUNNING:
            # Where a resume would really start: the newest intact checkpoint file (one
            # that is damaged or cut short is passed over, as the worker will).
            ckpt = newest_intact(resolve(folder, here), min(ckpt, done))
        run = {
            "run_id": run_id,
            "status": status,
            "seed": seed,
            "axes": json.loads(axes or "{}"),
            "error": error or "",
            "log": str(resolve(log, roots(store))) if log else None,
            "resume_epoch": ckpt or 0,
            "epochs": epochs,
            "epochs_done": done,
        }
        (result.problems if status in (State.FAILED, State.DIVERGED) else result.unfinished).append(
            run
        )
    return result


def _left_behind(
    con: Any, store: Path, result: StudyStatus
) -> tuple[dict[str, tuple[int, int]], dict[str, State]]:
    """Runs a writer that is gone left behind: those marked running, and pending ones whose
    journals show they started (the writer died before the store heard of it). What their
    journals hold is what `rebuild` and the next `optlab run` will make of them: a run
    whose journal holds its end (done, stopped at a rung, ...) is counted so, not as
    interrupted. Returns (interrupted run -> (epochs done, checkpoint epoch) per its
    journal, ended run -> its state), and moves ``result``'s counts accordingly."""
    counts = result.counts
    cut: dict[str, tuple[int, int]] = {}
    ended: dict[str, State] = {}
    in_jobs = leases.live_ids(store)  # training in Slurm jobs: not left behind
    for run_id, status in con.execute(
        "select run_id, status from runs where study = ? and status in "
        "('pending', 'running', 'interrupted')",
        [result.study],
    ).fetchall():
        if run_id in in_jobs:
            continue
        progress = journal_progress(store, run_id)
        if progress is not None and progress.ended is not None:
            ended[run_id] = progress.ended
            counts[status] -= 1
            counts[progress.ended] += 1
        elif progress is not None or status == State.RUNNING:
            cut[run_id] = (progress.epochs, progress.checkpoint) if progress else (0, 0)
            counts[status] -= 1
            counts[State.INTERRUPTED] += 1
    # Progress as the journals tell it: an ended run counts all its epochs, a cut one the
    # epochs its journal holds, whatever the store has of them yet.
    for run_id, planned, held in con.execute(
        "select r.run_id, r.epochs, (select count(*) from epochs e where e.run_id = r.run_id) "
        "from runs r where r.study = ? and r.run_id in (select unnest(?::varchar[]))",
        [result.study, [*ended, *cut]],
    ).fetchall():
        journaled = planned if run_id in ended else min(planned, cut[run_id][0])
        result.epochs_done += max(0, journaled - held)
    return cut, ended


def _eta(con: Any, name: str, workers: int) -> float | None:
    """Epochs still to run times the study's mean epoch time so far (training, evaluation
    and probes), over the workers: known from the first finished epoch, not the first
    finished run."""
    mean, left = con.execute(
        "select (select avg(e.seconds + coalesce(e.eval_seconds, 0) + "
        "coalesce(e.probe_seconds, 0)) from epochs e join runs r using (run_id) "
        "where r.study = ?), "
        "(select sum(greatest(r.epochs - (select count(*) from epochs e "
        "where e.run_id = r.run_id), 0)) from runs r where r.study = ? and r.status in "
        "('pending', 'running', 'interrupted'))",
        [name, name],
    ).fetchone()
    if mean is None or not workers:
        return None
    return float(mean) * float(left or 0) / workers


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
