"""The live progress view of `optlab run`: rich on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from optlab.states import State


def describe_axes(axes: dict[str, Any], seed: int) -> str:
    parts = [f"{k}={v}" for k, v in axes.items()]
    return " ".join([*parts, f"seed={seed}"])


class RunView:
    """Overall progress with ETA, one line per worker, counts of done and failed."""

    def __init__(self, console: Console, total: int, workers: list[str]):
        self.console, self.total = console, total
        self.rows: dict[str, dict[str, Any]] = {w: {} for w in workers}
        self.counts = {State.DONE: 0, State.FAILED: 0, State.DIVERGED: 0}
        self.live_mode = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.progress.add_task("runs", total=total)
        self._live: Live | None = None
        self.started = time.monotonic()

    def __enter__(self) -> RunView:
        if self.live_mode:
            self._live = Live(
                self._render(), console=self.console, refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def worker_started_run(self, worker: str, label: str, epochs: int) -> None:
        self.rows[worker] = {"run": label, "epoch": 0, "epochs": epochs, "acc": None}
        self._refresh()

    def epoch(self, worker: str | None, epoch: int, test_acc: float | None) -> None:
        if worker in self.rows and self.rows[worker]:
            self.rows[worker].update(epoch=epoch, acc=test_acc)
            self._refresh()

    def run_ended(self, worker: str | None, label: str, status: str, detail: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        self.progress.advance(self.task)
        if worker in self.rows:
            self.rows[worker] = {}
        if not self.live_mode:
            n = sum(self.counts.values())
            self.console.print(
                f"[{n}/{self.total}] {status} {label} {detail}".rstrip(),
                markup=False,
                highlight=False,
            )
        self._refresh()

    def idle(self, worker: str | None) -> None:
        """The worker handed its run back (paused at a rung) without it ending."""
        if worker in self.rows:
            self.rows[worker] = {}
            self._refresh()

    def grow(self, runs: int) -> None:
        """More runs to do than planned (final runs, a stopped run that goes on)."""
        self.total += runs
        self.progress.update(self.task, total=self.total)
        self._refresh()

    def note(self, message: str) -> None:
        """A line worth the user's attention (a resumed run, a silent worker, a busy store)."""
        self.console.print(message, markup=False, highlight=False)

    def silent(self, worker: str, seconds: float) -> None:
        if self.rows.get(worker):
            self.rows[worker]["silent"] = seconds
            self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Group:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
        for col in ("worker", "run", "epoch", "test acc"):
            table.add_column(col)
        for worker, row in self.rows.items():
            if row:
                acc = "-" if row["acc"] is None else f"{row['acc']:.4f}"
                if row.get("silent"):
                    acc += f" [red](silent {row['silent']:.0f} s)[/red]"
                table.add_row(worker, row["run"], f"{row['epoch']}/{row['epochs']}", acc)
            else:
                table.add_row(worker, "[dim]idle[/dim]", "", "")
        counts = "  ".join(f"{k} {v}" for k, v in self.counts.items())
        return Group(self.progress.get_renderable(), table, counts)
