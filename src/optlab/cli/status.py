"""optlab status: per study, counts by state, progress and ETA, and the failed runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from optlab.analysis.jobs import submissions
from optlab.analysis.status import study_status
from optlab.cli.common import STATE, StoreOption, handles_errors, out
from optlab.execution.progress import describe_axes
from optlab.states import State
from optlab.store.core import STATES

NAME = "status"
HELP = "Per study: runs by state, progress and ETA while running, and the failed runs."


@handles_errors
def command(
    study: str = typer.Argument(None, help="Only this study.", show_default=False),
    store: Path = StoreOption,
) -> None:

    results = study_status(store, study)
    if not results:
        out.print(f"No studies in {store} yet.")
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("study", "runs", *STATES, "progress", "eta"):
        table.add_column(col, justify="left" if col == "study" else "right")
    for s in results:
        pct = f"{100 * s.progress:.0f}%" if s.progress is not None else "-"
        eta = _eta(s.eta_seconds) if s.active_workers else "-"
        table.add_row(s.study, str(s.total), *(str(s.counts[k]) for k in STATES), pct, eta)
    out.print(table)
    for s in results:
        if s.matrix is not None:
            out.print(
                f"{s.study}: {s.finished} of the study file's {s.matrix} runs finished "
                f"({s.total} of them run so far, in parts)",
                markup=False,
            )
        if s.active_workers:
            nodes = ", ".join(f"{node} {n}" for node, n in sorted(s.nodes.items()))
            where = f" ({s.executor}: {nodes})" if nodes else ""
            out.print(f"{s.study}: running on {s.active_workers} worker(s){where}", markup=False)
        if s.gone:
            out.print(
                f"{s.study}: interrupted (writer gone: {s.gone}); run the study again to resume",
                markup=False,
            )
        for p in s.problems:
            resume = (
                f" (--retry-failed resumes from epoch {p['resume_epoch']} of {p['epochs']})"
                if p["status"] == State.FAILED and p["resume_epoch"]
                else ""
            )
            out.print(
                f"{s.study} {p['status']} {p['run_id']} "
                f"{describe_axes(p['axes'], p['seed'])}: {p['error']}{resume}",
                markup=False,
            )
        for u in s.unfinished:
            where = (
                f"resumes from epoch {u['resume_epoch']} of {u['epochs']}"
                if u["resume_epoch"]
                else f"starts over (no checkpoint; {u['epochs_done']} of {u['epochs']} epochs done)"
            )
            if u["status"] == State.RUNNING:
                where = (
                    f"{u['epochs_done']} of {u['epochs']} epochs done; last checkpoint: "
                    f"{'epoch ' + str(u['resume_epoch']) if u['resume_epoch'] else 'none'}"
                )
            out.print(
                f"{s.study} {u['status']} {u['run_id']} "
                f"{describe_axes(u['axes'], u['seed'])}: {where}",
                markup=False,
            )
    _jobs(store)


def _jobs(store: Path) -> None:
    """The Slurm jobs of the store's open submissions, and what folding their journals in
    could not do."""
    folded = STATE.folded
    if folded is not None and folded.busy:
        out.print(
            "note: the store was being written, so the jobs' latest epochs are not in these "
            "counts yet (the next command writes them)",
            markup=False,
        )
    for sub in submissions(store):
        counts = ", ".join(f"{n} {state}" for state, n in sorted(sub.counts().items()))
        out.print(
            f"submission {sub.name} ({sub.cluster}, {sub.runs} runs): jobs {counts}",
            markup=False,
        )
        for job in sub.jobs:
            said = f"job {job.job_id}: {job.state}{' (' + job.detail + ')' if job.detail else ''}"
            if job.training:
                said += f", training {len(job.training)}: {' '.join(job.training)}"
            out.print(f"  {said}", markup=False)
            if job.lost:
                out.print(
                    f"  job {job.job_id} is gone with {len(job.lost)} run(s) unfinished "
                    f"({' '.join(job.lost)}): another job takes them over, or run the study "
                    "with --executor slurm again",
                    markup=False,
                )
            if job.state == "died" or job.lost:
                out.print(f"    its log: {sub.logs(job.job_id)}", markup=False)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
