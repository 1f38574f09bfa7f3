"""optlab status: per study, counts by state, progress and ETA, and the failed runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from optlab.analysis.status import study_status
from optlab.cli.common import StoreOption, handles_errors, out
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


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
