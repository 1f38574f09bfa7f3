"""What every reader of the store shares: opening a study, per-run metrics in SQL, quoting,
and turning values that JSON cannot hold into nulls.

Used by `optlab plot`, `analyze`, `report` and `export`; none of it imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optlab.errors import OptlabError
from optlab.events import EPOCH_FIELDS

REDUCERS = ("best", "final", "min", "max", "mean")
METRIC_COLUMNS = tuple(f for f in EPOCH_FIELDS if f != "epoch")


def q(text: str) -> str:
    """``text`` inside an SQL string literal."""
    return text.replace("'", "''")


def clean(value: Any) -> Any:
    """NaN and infinities to None (JSON has neither), numpy scalars to Python ones, through
    dicts and lists."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a chart's data: :func:`clean`, and anything but a number, string or bool
    (a date, a decimal) as its text."""

    def one(v: Any) -> Any:
        v = clean(v)
        return v if isinstance(v, int | float | str | bool) or v is None else str(v)

    return [{k: one(v) for k, v in row.items()} for row in rows]


def fetch_rows(con: Any, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def parse_metric(metric: str) -> tuple[str, str]:
    """``best_test_acc`` -> ("best", "test_acc"). Best is max for accuracies, min otherwise."""
    reducer, _, column = metric.partition("_")
    if reducer not in REDUCERS or column not in METRIC_COLUMNS:
        examples = ", ".join(f"best_{c}" for c in ("test_acc", "test_loss", "train_loss"))
        raise OptlabError(
            f"--metric {metric!r}: not a metric; use REDUCER_COLUMN with REDUCER one of "
            f"{', '.join(REDUCERS)} and COLUMN one of {', '.join(METRIC_COLUMNS)} "
            f"(e.g. {examples})"
        )
    return reducer, column


def reduce_sql(reducer: str, column: str) -> str:
    """SQL of a run's metric over its epochs (rows of ``epochs e``)."""
    if reducer == "best":
        reducer = "max" if column.endswith("_acc") else "min"
    if reducer == "final":
        return f"arg_max(e.{column}, e.epoch)"
    return {"min": "min", "max": "max", "mean": "avg"}[reducer] + f"(e.{column})"


def study_axes(con: Any, study: str | None) -> tuple[str, list[str]]:
    """The study (the only one, when not named) and the axes its blocks vary, in order."""
    rows = dict(con.execute("select study, axes from studies").fetchall())
    if study is None:
        if len(rows) != 1:
            raise OptlabError(f"--study: name one of {', '.join(sorted(rows)) or '(none yet)'}")
        study = next(iter(rows))
    if study not in rows:
        raise OptlabError(f"--study {study!r}: no such study; studies: {', '.join(sorted(rows))}")
    axes: list[str] = []
    for block_axes in json.loads(rows[study] or "{}").values():
        axes += [a for a in block_axes if a not in axes]
    return study, axes


@contextmanager
def open_study(store: Path, study: str | None) -> Iterator[tuple[Any, str, list[str]]]:
    """The store opened read-only (with the analysis views), the study and its axes."""
    from optlab import views
    from optlab.store import reading

    with reading(store) as con:
        views.ensure_readable(con)
        name, axes = study_axes(con, study)
        yield con, name, axes
