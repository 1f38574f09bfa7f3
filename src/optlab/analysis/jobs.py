"""The Slurm jobs of a store's open submissions, for `optlab status`: each job's state as
the cluster tells it (``sacct``; for the local cluster, whether its process lives), the
runs it trains (their leases) and the runs whose job died (a stale lease on a run that has
not ended). Read from the files beside the store; nothing here writes."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from optlab import leases
from optlab.events import progress, read_journal
from optlab.locations import journal_path
from optlab.store.folding import open_submissions
from optlab.store.liveness import pid_alive

QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING"}
RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}
ENDED = {"COMPLETED"}
# anything else (FAILED, NODE_FAIL, TIMEOUT, CANCELLED, OUT_OF_MEMORY, PREEMPTED,
# BOOT_FAIL, DEADLINE) ended the job before its work was done


@dataclass
class Job:
    job_id: str
    state: str  # queued, active, ended, died, unknown
    detail: str = ""  # the cluster's own word (NODE_FAIL) and node
    training: list[str] = field(default_factory=list)  # runs it holds live leases of
    lost: list[str] = field(default_factory=list)  # its runs whose leases went stale


@dataclass
class Submission:
    name: str
    cluster: str
    runs: int
    jobs: list[Job]

    folder: Path  # the submission's, beside the store

    def logs(self, job_id: str) -> Path:
        """Where submitit keeps what the job printed (its .out and .err)."""
        return self.folder / "submitit" / job_id  # (Slurm names an array task 4242_0)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for job in self.jobs:
            out[job.state] = out.get(job.state, 0) + 1
        return out


def submissions(store: Path) -> list[Submission]:
    """The store's open submissions (some planned run has not ended in the store)."""
    out = []
    held = leases.read_all(store)
    for name, run_ids in open_submissions(store).items():
        try:
            record = json.loads(leases.jobs_path(store, name).read_text())
        except (OSError, ValueError):
            continue  # being submitted
        ids = [str(j) for j in record["jobs"]]
        states = _local_states(ids) if record.get("pids") else _sacct(ids)
        jobs = {i: Job(i, *states.get(i, ("unknown", ""))) for i in ids}
        for run_id in run_ids:
            lease = held.get(run_id)
            job = jobs.get(_job_of(lease.holder)) if lease is not None else None
            if job is None:
                continue
            if lease.live:
                job.training.append(run_id)
            elif not _ended(store, run_id):
                job.lost.append(run_id)
        folder = leases.submissions_dir(store) / name
        out.append(Submission(name, record["cluster"], len(run_ids), list(jobs.values()), folder))
    return out


def _ended(store: Path, run_id: str) -> bool:
    found = progress(read_journal(journal_path(store, run_id)))
    return found is not None and found.ended is not None


def _job_of(holder: str) -> str:
    return holder.removeprefix("local-")


def _local_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """The local cluster's jobs are processes on this machine (submitit's controllers)."""
    return {i: ("active", "") if pid_alive(int(i)) else ("ended", "") for i in ids}


def _sacct(ids: list[str]) -> dict[str, tuple[str, str]]:
    """Each job's state by ``sacct`` (array tasks still pending come as one line,
    ``123_[2-5%4]``); unknown where sacct cannot be asked."""
    arrays = sorted({i.split("_")[0] for i in ids})
    try:
        proc = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State,NodeList", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, tuple[str, str]] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3:
            continue
        word = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"  # CANCELLED by 123
        node = parts[2] if parts[2] not in ("", "None assigned") else ""
        for job_id in _expand(parts[0]):
            out[job_id] = (_state(word), f"{word}{' on ' + node if node else ''}")
    return out


def _expand(job_id: str) -> list[str]:
    """``123_[0-2,5%4]`` -> 123_0, 123_1, 123_2, 123_5; others as they are."""
    found = re.fullmatch(r"(\d+)_\[([^\]]*)\]", job_id)
    if not found:
        return [job_id]
    base, spec = found.group(1), found.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += [f"{base}_{k}" for k in range(int(lo), int(hi or lo) + 1)]
    return out


def _state(word: str) -> str:
    if word in QUEUED:
        return "queued"
    if word in RUNNING:
        return "active"
    if word in ENDED:
        return "ended"
    return "died"
