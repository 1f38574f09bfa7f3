"""`optlab status`: per study, counts by state, progress and ETA, and the failed runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optlab.errors import OptlabError
from optlab.store import STATES, reading

LIVE_SECONDS = 30  # a session whose heartbeat is older than this is not running any more


@dataclass
class StudyStatus:
    study: str
    counts: dict[str, int]
    active_workers: int = 0
    eta_seconds: float | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def finished(self) -> int:
        return sum(self.counts[s] for s in ("done", "failed", "diverged"))


def study_status(store: Path, study: str | None = None) -> list[StudyStatus]:
    with reading(store) as con:
        names = [s for (s,) in con.execute("select study from studies order by study").fetchall()]
        if study is not None and study not in names:
            listed = ", ".join(names) or "(none yet)"
            raise OptlabError(f"no study {study!r} in {store}; studies: {listed}")
        out = []
        for name in [study] if study else names:
            out.append(_one(con, name))
    return out


def _one(con: Any, name: str) -> StudyStatus:
    counts = dict.fromkeys(STATES, 0)
    for status, n in con.execute("select status, count(*) from runs where study = ? "
                                 "group by status", [name]).fetchall():
        counts[status] = n
    result = StudyStatus(name, counts)
    live = con.execute(
        "select coalesce(sum(workers), 0) from sessions where study = ? and ended_at is null "
        f"and heartbeat_at > now()::timestamp - interval {LIVE_SECONDS} second", [name]
    ).fetchone()[0]
    result.active_workers = int(live)
    if live:
        (mean,) = con.execute("select avg(wall_seconds) from runs where study = ? and "
                              "status = 'done'", [name]).fetchone()
        remaining = counts["pending"] + counts["running"] + counts["interrupted"]
        if mean is not None:
            result.eta_seconds = mean * remaining / live
    rows = con.execute(
        "select run_id, status, seed, axes, error, log_path from runs where study = ? and "
        "status in ('failed', 'diverged') order by position", [name]).fetchall()
    for run_id, status, seed, axes, error, log in rows:
        result.problems.append({"run_id": run_id, "status": status, "seed": seed,
                                "axes": json.loads(axes or "{}"), "error": error or "",
                                "log": log})
    return result
