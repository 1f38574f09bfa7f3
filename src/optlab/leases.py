"""Leases: which job trains a run, where jobs share nothing but a folder (Slurm).

A job that takes a run creates ``optlab.runs/leases/RUN`` (a small JSON file naming the job,
its node and how long the lease lasts unrenewed) and renews it by touching it while the run
trains. A lease untouched for longer than its ``stale_after`` seconds is stale: its job is
gone (a node failure, a kill), and another job may take the run over. A job takes back its
own leases at once: Slurm starts a requeued job only once its previous life has ended.

The store's readers use the same files to tell a run training in a job from one whose job
died, and `optlab run` leaves alone the runs a live lease holds. Nothing here opens the
store, and nothing imports torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from optlab.atomic import write_atomic
from optlab.locations import runs_dir


def leases_dir(store: Path) -> Path:
    return runs_dir(store) / "leases"


def submissions_dir(store: Path) -> Path:
    """Where each submission to Slurm keeps its plan, its job ids and submitit's files:
    ``optlab.runs/slurm/SUBMISSION/``."""
    return runs_dir(store) / "slurm"


def plan_path(store: Path, submission: str) -> Path:
    return submissions_dir(store) / submission / "plan.json"


def jobs_path(store: Path, submission: str) -> Path:
    return submissions_dir(store) / submission / "jobs.json"


@dataclass(frozen=True)
class Lease:
    run_id: str
    holder: str  # the job: Slurm's JOBID or ARRAYID_TASK, or a local process
    node: str
    stale_after: float  # seconds unrenewed after which the holder counts as gone
    age: float  # seconds since it was taken or renewed

    @property
    def live(self) -> bool:
        return self.age <= self.stale_after


def _path(store: Path, run_id: str) -> Path:
    return leases_dir(store) / run_id


def _payload(holder: str, node: str, stale_after: float) -> bytes:
    body = {"holder": holder, "node": node, "stale_after": stale_after, "pid": os.getpid()}
    return json.dumps(body).encode()


def read(store: Path, run_id: str) -> Lease | None:
    """The run's lease, or None when it has none (or it is being replaced)."""
    path = _path(store, run_id)
    try:
        mtime = path.stat().st_mtime
        body = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return Lease(
        run_id,
        str(body.get("holder")),
        str(body.get("node")),
        float(body.get("stale_after") or 0.0),
        max(0.0, time.time() - mtime),
    )


def read_all(store: Path) -> dict[str, Lease]:
    """Every run's lease beside ``store``, live or stale."""
    try:
        names = [e.name for e in os.scandir(leases_dir(store)) if not e.name.startswith(".")]
    except FileNotFoundError:
        return {}
    found = {name: read(store, name) for name in names if not name.endswith(".steal")}
    return {k: v for k, v in found.items() if v is not None}


def live_ids(store: Path) -> frozenset[str]:
    """The runs a live lease holds: training in a job now."""
    return frozenset(k for k, v in read_all(store).items() if v.live)


def claim(store: Path, run_id: str, holder: str, node: str, stale_after: float) -> bool:
    """Take ``run_id`` for ``holder``: when it has no lease, when the lease is the holder's
    own (a requeued job), or when it is stale (its job is gone). Two jobs taking over the
    same stale lease at once: one wins, through a short-lived ``RUN.steal`` file."""
    path = _path(store, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _payload(holder, node, stale_after)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return _take_over(store, run_id, holder, payload)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(store: Path, run_id: str, holder: str, payload: bytes) -> bool:
    current = read(store, run_id)
    if current is None or (current.live and current.holder != holder):
        return False
    steal = _path(store, run_id).with_name(run_id + ".steal")
    try:
        fd = os.open(steal, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):  # left by a job that died taking it over
            if time.time() - steal.stat().st_mtime > max(current.stale_after, 60.0):
                steal.unlink()
        return False
    os.close(fd)
    try:
        again = read(store, run_id)  # another job may have taken it over meanwhile
        if again is None or (again.live and again.holder != holder):
            return False
        write_atomic(_path(store, run_id), payload)
        return True
    finally:
        with contextlib.suppress(OSError):
            steal.unlink()


def renew(store: Path, run_ids: list[str], holder: str) -> list[str]:
    """Touch ``holder``'s leases of ``run_ids``; the ids it no longer holds (taken over
    while this job was too slow to renew, or removed)."""
    lost = []
    for run_id in run_ids:
        lease = read(store, run_id)
        if lease is None or lease.holder != holder:
            lost.append(run_id)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.utime(_path(store, run_id))
    return lost


def release(store: Path, run_id: str, holder: str) -> None:
    """Give the run up (it ended, or its job is going): anyone may take it now."""
    lease = read(store, run_id)
    if lease is not None and lease.holder == holder:
        with contextlib.suppress(FileNotFoundError):
            _path(store, run_id).unlink()
