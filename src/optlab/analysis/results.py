"""What every reader of the store shares: opening a study, per-run metrics in SQL, quoting,
and turning values that JSON cannot hold into nulls.

Used by `optlab plot`, `analyze`, `report` and `export`; none of it imports torch.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from optlab.errors import OptlabError
from optlab.events import EPOCH_FIELDS
from optlab.store import views
from optlab.store.core import config_column, reading
from optlab.store.sql import q
from optlab.study import search
from optlab.study.paths import flatten
from optlab.study.steps import start_lr_sql

REDUCERS = ("best", "final", "min", "max", "mean")
METRIC_COLUMNS = tuple(f for f in EPOCH_FIELDS if f != "epoch")


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


def validation_counterpart(metric: str) -> str | None:
    """``best_test_acc`` -> ``best_val_acc``: what selection reads for a test metric; None
    for a metric that is not a test metric."""
    reducer, column = parse_metric(metric)
    if not column.startswith("test_"):
        return None
    return f"{reducer}_val_{column.removeprefix('test_')}"


def reduce_sql(reducer: str, column: str) -> str:
    """SQL of a run's metric over its epochs (rows of ``epochs e``)."""
    if reducer == "best":
        reducer = "max" if column.endswith("_acc") else "min"
    if reducer == "final":
        return f"arg_max(e.{column}, e.epoch)"
    return {"min": "min", "max": "max", "mean": "avg"}[reducer] + f"(e.{column})"


class Axes(list):
    """The axes a study varies, in order, with the values each takes over its blocks.

    An axis whose values are whole plugin tables (seed 001's three methods as ``optimizer =
    [{sgd, momentum 0}, {sgd, momentum 0.9}, ...]``) is not told apart by the plugin's name:
    its label (:meth:`sql` for charts, :meth:`label` for analyses) is the name and the
    parameters that differ between its tables, ``sgd momentum=0.9 weight_decay=0.0005``.
    """

    def __init__(
        self,
        names: list[str],
        values: dict[str, list[Any]] | None = None,
        searched: set[str] | None = None,
    ):
        super().__init__(names)
        self.values = values or {}
        # Axes drawn by a [block.search]: each point has its own value, so a value is no
        # panel of its own (charts draw the points where they fall).
        self.searched = searched or set()

    def varied(self, axis: str) -> list[str]:
        """For a plugin-table axis, the parameter paths that differ between its tables."""

        tables = [v for v in self.values.get(axis, []) if isinstance(v, dict)]
        if len(tables) < 2:
            return []
        flat = [flatten({k: v for k, v in t.items() if k != "name"}) for t in tables]
        keys = list(dict.fromkeys(k for f in flat for k in f))
        return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]

    def sql(self, axis: str) -> str:
        """SQL of a run's value of ``axis`` (over the runs view, ``r``), as its label."""

        if axis == "optimizer.lr":  # the LR runs start from, after any batch scaling rule
            return start_lr_sql()
        column = f'r."{config_column(axis)}"'
        keys = self.varied(axis)
        if not keys:
            return column
        parts = [f"coalesce({column}::varchar, '-')"] + [
            f"'{q(k)}=' || coalesce(r.\"{config_column(f'{axis}.{k}')}\"::varchar, '-')"
            for k in keys
        ]
        return f"concat_ws(' ', {', '.join(parts)})"

    def label(self, axis: str, get: Any) -> str:
        """A run's label for ``axis`` from ``get(path)`` (its flattened config)."""
        parts = [str(get(axis))] + [f"{k}={get(f'{axis}.{k}')}" for k in self.varied(axis)]
        return " ".join(parts)


def study_axes(con: Any, study: str | None) -> tuple[str, Axes]:
    """The study (the only one, when not named) and the axes its blocks vary, in order."""
    rows = dict(con.execute("select study, axes from studies").fetchall())
    if study is None:
        if len(rows) != 1:
            raise OptlabError(f"--study: name one of {', '.join(sorted(rows)) or '(none yet)'}")
        study = next(iter(rows))
    if study not in rows:
        raise OptlabError(f"--study {study!r}: no such study; studies: {', '.join(sorted(rows))}")
    names: list[str] = []
    values: dict[str, list[Any]] = {}
    for block_axes in json.loads(rows[study] or "{}").values():
        names += [a for a in block_axes if a not in names]
        for axis, taken in block_axes.items():
            have = values.setdefault(axis, [])
            have += [v for v in taken if v not in have]
    (source,) = con.execute("select source from studies where study = ?", [study]).fetchone()
    return study, Axes(names, values, _searched(source))


def _searched(source: str | None) -> set[str]:
    """The paths a study's ``[block.search]`` tables draw, from its stored source."""

    try:
        blocks = tomllib.loads(source or "").get("block") or []
    except tomllib.TOMLDecodeError:
        return set()
    out: set[str] = set()
    for block in blocks if isinstance(blocks, list) else []:
        table = block.get("search") if isinstance(block, dict) else None
        if table:
            try:
                out |= set(search.parse(table)[3])
            except (search.SearchError, ValueError, TypeError):
                continue
    return out


def probes_asked(con: Any, study: str) -> dict[str, tuple[int, int]]:
    """The probes the study's runs ask for (their configs, not the values reported so far):
    name -> (runs that ask for it, of them finished)."""
    rows = con.execute(
        "select p.name, count(*), count(*) filter (where r.status = 'done') from runs r, "
        "unnest(json_extract_string(r.config, '$.probes[*].name')) as p(name) "
        "where r.study = ? group by 1 order by 1",
        [study],
    ).fetchall()
    return {name: (n, done) for name, n, done in rows}


def axis_sql(axes: Any, axis: str) -> str:
    """SQL of a run's value of ``axis``: its label when ``axes`` knows it (see :class:`Axes`),
    else its config column."""
    if isinstance(axes, Axes):
        return axes.sql(axis)

    return f'r."{config_column(axis)}"'


@contextmanager
def open_study(store: Path, study: str | None) -> Iterator[tuple[Any, str, Axes]]:
    """The store opened read-only (with the analysis views), the study and its axes."""

    with reading(store) as con:
        views.ensure_readable(con)
        name, axes = study_axes(con, study)
        yield con, name, axes
