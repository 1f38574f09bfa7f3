"""The ``slurm`` executor: a study's runs submitted to Slurm through submitit, as a job array;
`optlab run` returns once the jobs are queued and nothing of optlab's stays alive here.

Each job runs :class:`~optlab.execution.executors.slurm_job.NodeJob` on its node: the local
pool on the node's slots, taking the submission's runs through leases beside the store, and
requeued through submitit at its time limit with its runs checkpointed. The store learns
what the jobs did from the runs' journals, folded in by whichever optlab command opens it
next (:mod:`optlab.store.folding`).

``--executor-opt cluster=local`` runs the same path through submitit's local executor
(real processes and signals on this machine): how it is tested without a cluster.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from optlab import leases
from optlab.atomic import write_atomic
from optlab.errors import UsageError
from optlab.execution.devices import Slot, parse_gpus
from optlab.execution.executors import Sink, TaskExtra
from optlab.execution.executors.slurm_job import CONTINUATION, NodeJob
from optlab.execution.executors.work import WorkQueue
from optlab.plugins.plugin import Params, Plugin
from optlab.study.expand import RunSpec

MAX_JOBS = 32  # the default number of jobs, at most (array_parallelism limits how many run)


class SlurmParams(Params):
    cluster: Literal["slurm", "local"] = Field(
        "slurm", description="'local': submitit's local executor, jobs as processes here"
    )
    jobs: int | None = Field(
        None,
        ge=1,
        description="jobs in the array (default: enough for every run a slot, "
        f"at most {MAX_JOBS}); each takes runs until none is left",
    )
    time: float = Field(
        60.0,
        gt=0,
        description="each job's time limit in minutes (or 4h, "
        "1:30:00, 2-00:00:00); the job is requeued with its runs checkpointed",
    )
    partition: str | None = Field(None, description="the Slurm partition the jobs run in")
    account: str | None = Field(None, description="the account the jobs are charged to")
    qos: str | None = Field(None, description="the jobs' quality of service")
    gpus_per_node: int | None = Field(
        None, ge=0, description="GPUs per job (default: --gpus' count; 0: CPU jobs)"
    )
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs per job (default: one a slot)")
    mem: str | None = Field(None, description="memory per job: 32G, 500M")
    array_parallelism: int | None = Field(None, ge=1, description="jobs running at once")
    sbatch: str | None = Field(
        None, description="extra #SBATCH lines, ';' between them: --constraint=a100;--exclusive"
    )
    setup: str | None = Field(
        None, description="shell lines run before the job, ';' between them: module load cuda"
    )
    signal_delay: int = Field(
        120,
        ge=1,
        description="seconds before the time limit at which "
        "the runs are told to hold (at least an epoch's time)",
    )
    lease: float = Field(
        300.0,
        gt=0,
        description="seconds without renewal after which a "
        "job counts as gone and its runs go to another job",
    )
    requeues: int = Field(50, ge=0, description="time limits a job may reach and be requeued")

    @field_validator("time", mode="before")
    @classmethod
    def _minutes(cls, value: Any) -> Any:
        return minutes(value) if isinstance(value, str) else value


SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
UNITS = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def minutes(text: str) -> float:
    """Minutes in Slurm's forms (``90``, ``1:30:00``, ``2-00:00:00``, ``MM:SS``) or ``4h``,
    ``90m``, ``1h30m``."""
    text = text.strip()
    units = UNITS.fullmatch(text)
    if units and text and not text.isdigit():
        h, m, s = (float(g) if g else 0.0 for g in units.groups())
        return 60 * h + m + s / 60
    found = SLURM_TIME.fullmatch(text)
    if not found:
        raise ValueError("not a time limit; give minutes (90), 1:30:00, 2-00:00:00 or 4h")
    days, a, b, c = found.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        return 1440 * int(days) + 60 * int(a) + int(b or 0) + int(c or 0) / 60
    if c is not None:  # HH:MM:SS
        return 60 * int(a) + int(b) + int(c) / 60
    if b is not None:  # MM:SS
        return int(a) + int(b) / 60
    return float(a)


def gpus_per_job(params: SlurmParams, gpus: str | None) -> int:
    """--gpus on a cluster is how many GPUs each job gets (its indices are Slurm's to
    choose): ``0-3`` or ``4`` GPUs... ``none``: CPU jobs; ``all`` needs gpus_per_node."""
    if gpus is None:
        return params.gpus_per_node or 0
    spec = gpus.strip().lower()
    if spec == "all":
        if not params.gpus_per_node:
            raise UsageError(
                "--gpus all: on Slurm, say how many GPUs each job gets (--gpus 0-3, or "
                "--executor-opt gpus_per_node=4)"
            )
        return params.gpus_per_node
    count = len(parse_gpus(spec, [str(i) for i in range(256)], " on a node"))
    if params.gpus_per_node is not None and params.gpus_per_node != count:
        raise UsageError(
            f"--gpus {gpus} ({count} per job) and --executor-opt gpus_per_node="
            f"{params.gpus_per_node} disagree; give one"
        )
    return count


class SlurmExecutor:
    """Driven by the coordinator like any executor, but its ``run`` trains nothing here: it
    takes every run the coordinator queues (with what the worker is to be told: its
    checkpoint folder, the rung it stops at), submits them as one job array and returns
    (``submits``: `optlab run` then says what was submitted, not how the runs ended)."""

    name = "slurm"
    submits = True

    def __init__(self, params: SlurmParams, store: Path, stall_timeout: float, data_dir: Any):
        self.params, self.store = params, Path(store).absolute()
        self.stall_timeout, self.data_dir = stall_timeout, data_dir
        self.slots_asked: tuple[str | None, int, int | None] = (None, 1, None)
        self.submitted: tuple[str, list[str], int] | None = None  # submission, jobs, runs
        # What the last job of a submission calls to go on: the same `optlab run` again,
        # which decides at the rungs reached and submits the next round (halving, finals).
        self.continuation: Any = None
        self._halted = False

    def make_slots(
        self, gpus: str | None, per_gpu: int, workers: int | None, runs: int | None
    ) -> list[Slot]:
        """One slot standing for the jobs (a node's slots are the node's to make)."""
        gpus_per_job(self.params, gpus)  # what can be checked here
        self.slots_asked = (gpus, per_gpu, workers)
        return [Slot("slurm", None, 0)]

    def where(self, slots: list[Slot]) -> str:
        return f"slurm: {self.params.cluster}"

    def notes(
        self, slots: list[Slot], per_gpu: int, workers: int | None, runs: list[RunSpec]
    ) -> list[str]:
        return []

    async def run(
        self, work: WorkQueue, slots: list[Slot], sink: Sink, task_extra: TaskExtra
    ) -> None:
        entries = []
        while not self._halted and (spec := await work.take()) is not None:
            extra = task_extra(spec, slots[0])
            entries.append(
                {
                    "task": spec.task(),
                    "checkpoint_dir": extra.get("checkpoint_dir"),
                    "threads": extra.get("threads") or None,  # recorded by an earlier attempt
                    "stop_at": extra.get("stop_at"),
                    "past_rung": bool(extra.get("past_rung")),
                }
            )
            work.release()
        if entries and not self._halted:
            self.submitted = (*self.submit(entries, *self.slots_asked), len(entries))

    def halt(self) -> None:
        self._halted = True

    def nodes(self) -> dict[str, int]:
        return {}

    def submit(
        self,
        entries: list[dict[str, Any]],
        gpus: str | None,
        per_gpu: int,
        workers: int | None,
    ) -> tuple[str, list[str]]:
        """Write the plan beside the store and submit its jobs: (the submission, job ids)."""
        import submitit  # noqa: PLC0415 - the optional dependency, needed only to submit

        p = self.params
        gpus_n = gpus_per_job(p, gpus)
        slots = per_gpu * gpus_n if gpus_n else (workers or 1)
        jobs = p.jobs or max(1, min(MAX_JOBS, math.ceil(len(entries) / slots)))
        submission = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        plan = {
            "created": time.time(),
            "gpus_per_node": gpus_n,
            "per_gpu": per_gpu,
            "workers": workers or (None if gpus_n else 1),
            "stall_timeout": self.stall_timeout,
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "lease": p.lease,
            "runs": entries,
            "continues": self.continuation is not None,
        }
        folder = leases.submissions_dir(self.store) / submission
        if self.continuation is not None:
            write_atomic(folder / CONTINUATION, pickle.dumps(self.continuation))
        write_atomic(leases.plan_path(self.store, submission), json.dumps(plan).encode())
        try:
            kind = submitit.LocalExecutor if p.cluster == "local" else submitit.SlurmExecutor
            executor = kind(folder=folder / "submitit" / "%j", max_num_timeout=p.requeues)
            executor.update_parameters(**self._parameters(gpus_n, slots))
            with _detached(p.cluster == "local"), executor.batch():
                job = NodeJob(str(self.store), submission)
                handles = [executor.submit(job) for _ in range(jobs)]
        except BaseException as e:  # sbatch refused (or Ctrl-C): one line, nothing left
            shutil.rmtree(folder, ignore_errors=True)
            if not isinstance(e, Exception):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UsageError(
                f"--executor slurm: the jobs could not be submitted: {first}"
            ) from None
        ids = [h.job_id for h in handles]
        record = {"cluster": p.cluster, "jobs": ids, "submitted": time.time()}
        record["runs"] = len(entries)
        record["pids"] = p.cluster == "local"  # the jobs are processes here, not Slurm's
        write_atomic(leases.jobs_path(self.store, submission), json.dumps(record).encode())
        return submission, ids

    def _parameters(self, gpus_n: int, slots: int) -> dict[str, Any]:
        """submitit's parameters of the executor for ``cluster`` (its own names)."""
        p = self.params
        cpus = p.cpus_per_task or slots
        limit = max(1, math.ceil(p.time))  # Slurm's limits are whole minutes
        if p.cluster == "local":
            options: dict[str, Any] = {"timeout_min": limit, "gpus_per_node": gpus_n}
            options |= {"signal_delay_s": p.signal_delay, "cpus_per_task": cpus}
            return options | ({"setup": _lines(p.setup)} if p.setup else {})
        options = {
            "time": limit,
            "nodes": 1,
            "ntasks_per_node": 1,
            "cpus_per_task": cpus,
            "signal_delay_s": p.signal_delay,
            "job_name": f"optlab-{self.store.stem}",
        }
        if gpus_n:
            options["gpus_per_node"] = gpus_n
        if p.mem:
            options["mem"] = f"{_gigabytes(p.mem):g}GB"
        for key in ("partition", "account", "qos", "array_parallelism"):
            if getattr(p, key) is not None:
                options[key] = getattr(p, key)
        if p.setup:
            options["setup"] = _lines(p.setup)
        if p.sbatch:
            extra: dict[str, Any] = {}
            for line in _lines(p.sbatch):
                key, eq, value = line.lstrip("-").partition("=")
                extra[key.replace("-", "_")] = value if eq else True
            options["additional_parameters"] = extra
        return options

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _detached(local: bool) -> Iterator[None]:
    """The local cluster's jobs started without this terminal's stdin, stdout and stderr
    (a Slurm job has none of them either): `optlab run` and whoever reads its output are
    not kept waiting for the jobs to end."""
    if not local:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        yield
    finally:
        for fd, kept in zip((0, 1, 2), saved, strict=True):
            os.dup2(kept, fd)
            os.close(kept)
        os.close(null)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split(";") if line.strip()]


def _gigabytes(text: str) -> float:
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([MGT]?)B?\s*", text, re.IGNORECASE)
    if not found:
        raise UsageError(f"--executor-opt mem={text!r}: give an amount such as 32G or 500M")
    scale = {"": 1.0, "M": 1 / 1024, "G": 1.0, "T": 1024.0}[found.group(2).upper()]
    return float(found.group(1)) * scale


def build(
    params: SlurmParams,
    *,
    store: Path,
    stall_timeout: float = 600.0,
    data_dir: Path | None = None,
    **_: Any,
) -> SlurmExecutor:
    return SlurmExecutor(params, store, stall_timeout, data_dir)


def check(params: SlurmParams, *, gpus: str | None, per_gpu: int, workers: int | None, **_: Any):
    gpus_per_job(params, gpus)
    if params.mem:
        _gigabytes(params.mem)


slurm = Plugin(
    "jobs on a Slurm cluster through submitit; optlab run returns once they are queued "
    "(needs pip install 'optlab[slurm]')",
    SlurmParams,
    build,
    check=check,
)
