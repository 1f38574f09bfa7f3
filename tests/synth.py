"""Stores with made-up results, written through the real schema and event path: for testing
analyses, charts, reports and exports on answers known in advance, without training."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optlab.store import core as st
from optlab.study.expand import all_runs, expand
from optlab.study.schema import load_study

Outcome = Callable[[dict[str, Any], int], Any]


def make_store(
    folder: Path,
    study_text: str,
    accuracy: Outcome,
    epochs: int = 3,
    status: Callable[[dict[str, Any], int], str] | None = None,
    grad_norm: Outcome | None = None,
    name: str = "s.toml",
    blocks: list[str] | None = None,
    validation: Outcome | None = None,
) -> Path:
    """Register the study and give every run ``epochs`` epochs whose test accuracy rises
    to ``accuracy(config, seed)``; ``status`` may make a run diverge, fail or stop at a rung;
    ``grad_norm(config, seed)`` gives per-epoch full gradient norms as a list; ``blocks``
    registers only those blocks (a study run in parts); ``validation(config, seed)`` gives
    the validation accuracy the runs rise to (none without it)."""
    path = folder / name
    path.write_text(textwrap.dedent(study_text))
    study = load_study(path)
    plans = expand(study)
    matrix = {r.run_id for r in all_runs(plans)}
    if blocks is not None:  # a study run in parts: only these blocks so far
        plans = [p for p in plans if p.name in blocks]
    db = folder / "optlab.duckdb"
    with st.writing(db) as con:
        st.ensure_schema(con)
        st.register_study(con, study, plans, db, matrix)
        events: list[dict[str, Any]] = []
        for run in all_runs(plans):
            state = status(run.config, run.seed) if status else "done"
            if state == "pending":
                continue
            final = accuracy(run.config, run.seed)
            val_final = validation(run.config, run.seed) if validation else None
            events.append(
                {
                    "type": "started",
                    "run_id": run.run_id,
                    "time": 1.0e9,
                    "provenance": {"device": "cpu"},
                }
            )
            batch = run.config["batch_schedule"].get("batch_size", 100)
            norms = grad_norm(run.config, run.seed) if grad_norm else None
            for e in range(1, epochs + 1):
                acc = final * e / epochs
                if state == "diverged" and e == epochs:
                    acc = float("nan")
                events.append(
                    {
                        "type": "epoch",
                        "run_id": run.run_id,
                        "epoch": e,
                        "step": 10 * e,
                        "samples": 1000 * e,
                        "sfo": 1000 * e,
                        "epoch_lr": 0.1,
                        "epoch_batch_size": batch,
                        "train_loss": 1 - acc if acc == acc else None,
                        "train_acc": acc,
                        "test_loss": 1 - acc if acc == acc else None,
                        "test_acc": None if math.isnan(acc) else acc,
                        "seconds": 0.5,
                        "eval_seconds": 0.1,
                        "probe_seconds": 0.0,
                        "sfo_full_batches": 1000 * e,
                        "comm_rounds": 10 * e,
                        "val_acc": None if val_final is None else val_final * e / epochs,
                    }
                )
                if norms is not None:
                    events.append(
                        {
                            "type": "probe",
                            "run_id": run.run_id,
                            "epoch": e,
                            "step": 10 * e,
                            "probe": "full_grad_norm",
                            "values": {"global": norms[e - 1]},
                        }
                    )
            if state == "stopped":  # by halving, at a rung after its last epoch here
                events.append(
                    {
                        "type": "rung",
                        "run_id": run.run_id,
                        "epoch": epochs,
                        "decision": "stop",
                        "reason": "made-up rung",
                    }
                )
                continue
            end = {"done": "finished"}.get(state, state)
            events.append(
                {
                    "type": end,
                    "run_id": run.run_id,
                    "time": 1.0e9 + 10,
                    "error": None if state == "done" else f"made-up {state}",
                }
            )
        st.apply_events(con, events)
    return db
