"""optlab export: a study's results as files, in optlab's own tables or the seed projects'
layouts.

- ``csv`` / ``parquet``: ``runs`` and the per-run tables (``epochs``, ``probes`` and
  ``rungs``, halving's decisions) of the study's runs, one file each (written by DuckDB).
- ``seed001`` (seed projects 000 and 001): ``results/results.csv``, one aggregated row per
  run, and ``history/<block>_<run_id>.json``, the per-epoch history of each run.
- ``seed004``: per run a folder ``<block>/[<cell>/]run<k>/`` (k counts seeds from 1) with
  the reference code's four files and columns: ``train.csv`` (Epoch, Steps, Train Loss,
  Train Accuracy, Learning Rate), ``test.csv`` (Epoch, Steps, Test Loss, Test Accuracy),
  ``norm.csv`` (Epoch, Steps, Full Gradient Norm: the ``full_grad_norm`` probe) and
  ``lr_bs.csv`` (Epoch, Steps, Learning Rate, Batch Size: one row per optimizer step).
  Accuracies are in percent, as there; Steps counts optimizer steps so far.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from optlab.analysis.results import clean, fetch_rows, open_study
from optlab.errors import OptlabError
from optlab.store.schema import RUN_TABLES
from optlab.store.sql import q
from optlab.study.steps import per_step, start_lr

FORMATS = ("csv", "parquet", "seed001", "seed004")


def export(
    store: Path, study: str | None, folder: Path | None, fmt: str
) -> tuple[str, Path, list[Path]]:
    """Write the files (default folder: STUDY_export); returns (study, folder, paths)."""
    if fmt not in FORMATS:
        raise OptlabError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    with open_study(store, study) as (con, study, axes):
        folder = folder or Path(f"{study}_export")
        _prepare(folder)
        try:
            if fmt in ("csv", "parquet"):
                files = _tables(con, study, folder, fmt)
            elif fmt == "seed001":
                files = _seed001(con, study, axes, folder)
            else:
                files = _seed004(con, study, axes, folder)
        except OSError as e:
            raise OptlabError(f"export: cannot write in {folder}: {e.strerror or e}") from None
    return study, folder, files


def _prepare(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".optlab-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OptlabError(f"export: cannot write to {folder}: {e.strerror or e}") from None


def _tables(con: Any, study: str, folder: Path, fmt: str) -> list[Path]:
    members = f"(select run_id from memberships where study = '{q(study)}')"
    order = {"epochs": "run_id, epoch", "probes": "run_id, step, probe, key"}
    queries = {"runs": f"select * from runs where study = '{q(study)}' order by block, position"}
    present = {t for (t,) in con.execute("select table_name from duckdb_tables()").fetchall()}
    for table in [t for t in RUN_TABLES if t in present]:  # an older store has no rungs
        if table not in ("epochs", "probes") and not _any_rows(con, table, members):
            continue  # halving's decisions, when the study halves
        queries[table] = (
            f"select * from {table} where run_id in {members} "
            f"order by {order.get(table, 'run_id, epoch')}"
        )
    files = []
    option = "(format csv, header)" if fmt == "csv" else "(format parquet)"
    for name, sql in queries.items():
        path = folder / f"{name}.{fmt}"
        con.execute(f"copy ({sql}) to '{q(str(path))}' {option}")
        files.append(path)
    return files


def _any_rows(con: Any, table: str, members: str) -> bool:
    return bool(
        con.execute(f"select count(*) from {table} where run_id in {members}").fetchone()[0]
    )


# The seed projects' own names for the hyperparameters they vary most.
SEED_NAMES = {
    "batch_size": "batch_schedule.batch_size",
    "lr": "optimizer.lr",
    "wd": "optimizer.weight_decay",
    "momentum": "optimizer.momentum",
}


def _seed001(con: Any, study: str, axes: list[str], folder: Path) -> list[Path]:
    runs = fetch_rows(
        con,
        "select s.*, r.config from run_summary s join runs r using (study, run_id) "
        "where s.study = ? order by s.block, r.position",
        [study],
    )
    epochs = _epochs(con, study)
    (folder / "results").mkdir(exist_ok=True)
    (folder / "history").mkdir(exist_ok=True)
    results = folder / "results" / "results.csv"
    fields = [
        "run_id",
        "block",
        "seed",
        "status",
        *SEED_NAMES,
        "epochs",
        *[a for a in axes if a not in SEED_NAMES.values()],
        "final_test_acc",
        "best_test_acc",
        "best_epoch",
        "final_test_loss",
        "final_train_loss",
        "final_train_acc",
        "train_seconds",
    ]
    files = [results]
    with results.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for run in runs:
            config = json.loads(run["config"])
            row = {k: clean(run.get(k)) for k in fields if k in run}
            row.update({short: _lookup(config, path) for short, path in SEED_NAMES.items()})
            row["lr"] = start_lr(config)  # what the run trained at (after lr_scaling)
            row.update({a: _lookup(config, a) for a in axes if a not in SEED_NAMES.values()})
            row["epochs"] = config["epochs"]
            writer.writerow(row)
            history = {
                "run_id": run["run_id"],
                "study": study,
                "block": run["block"],
                "seed": run["seed"],
                "status": run["status"],
                "config": config,
                **{
                    key: [clean(e[col]) for e in epochs.get(run["run_id"], [])]
                    for key, col in (
                        ("epoch", "epoch"),
                        ("train_loss", "train_loss"),
                        ("train_acc", "train_acc"),
                        ("test_loss", "test_loss"),
                        ("test_acc", "test_acc"),
                        ("lr", "epoch_lr"),
                        ("batch_size", "epoch_batch_size"),
                        ("epoch_time", "seconds"),
                    )
                },
            }
            path = folder / "history" / f"{run['block']}_{run['run_id']}.json"
            path.write_text(json.dumps(history, indent=1))
            files.append(path)
    return files


def _lookup(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _epochs(con: Any, study: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in fetch_rows(
        con,
        "select e.* from epochs e join memberships m using (run_id) "
        "where m.study = ? order by e.run_id, e.epoch",
        [study],
    ):
        out.setdefault(row["run_id"], []).append(row)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "run"


# The reference code's four files: their exact headers. Accuracies are in percent there.
SEED004_HEADERS = {
    "train.csv": ["Epoch", "Steps", "Train Loss", "Train Accuracy", "Learning Rate"],
    "test.csv": ["Epoch", "Steps", "Test Loss", "Test Accuracy"],
    "norm.csv": ["Epoch", "Steps", "Full Gradient Norm"],
    "lr_bs.csv": ["Epoch", "Steps", "Learning Rate", "Batch Size"],
}


def _percent(value: Any) -> Any:
    return None if value is None else 100.0 * value


def _seed004(con: Any, study: str, axes: list[str], folder: Path) -> list[Path]:

    runs = fetch_rows(
        con,
        "select run_id, block, seed, axes, config from runs where study = ? "
        "order by block, position",
        [study],
    )
    epochs = _epochs(con, study)
    norms: dict[str, list[tuple[int, int, float]]] = {}
    for r, e, step, v in con.execute(
        "select p.run_id, p.epoch, p.step, p.value from probes p join memberships m "
        "using (run_id) where m.study = ? and p.probe = 'full_grad_norm' and "
        "p.key = 'global' order by p.run_id, p.epoch, p.step",
        [study],
    ).fetchall():
        norms.setdefault(r, []).append((e, step, v))
    cells: dict[str, set[str]] = {}
    for run in runs:
        cells.setdefault(run["block"], set()).add(run["axes"])
    seeds: dict[tuple[str, str], list[int]] = {}
    for run in runs:
        seeds.setdefault((run["block"], run["axes"]), []).append(run["seed"])
    files = []
    for run in runs:
        where = folder / _slug(run["block"])
        if len(cells[run["block"]]) > 1:
            cell = json.loads(run["axes"])
            where = where / _slug(",".join(f"{k}={v}" for k, v in cell.items()))
        k = sorted(seeds[(run["block"], run["axes"])]).index(run["seed"]) + 1
        where = where / f"run{k}"
        where.mkdir(parents=True, exist_ok=True)
        rows = epochs.get(run["run_id"], [])
        config = json.loads(run["config"])
        tables = {
            "train.csv": [
                [e["epoch"], e["step"], e["train_loss"], _percent(e["train_acc"]), e["epoch_lr"]]
                for e in rows
            ],
            "test.csv": [
                [e["epoch"], e["step"], e["test_loss"], _percent(e["test_acc"])] for e in rows
            ],
            "norm.csv": [list(n) for n in norms.get(run["run_id"], [])],
            "lr_bs.csv": [list(s) for s in per_step(config, rows)],
        }
        for name, body in tables.items():
            path = where / name
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(SEED004_HEADERS[name])
                writer.writerows([[clean(v) for v in row] for row in body])
            files.append(path)
    return files
