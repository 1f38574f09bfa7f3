"""The runs table's and the comparison's answers (``/api/studies/NAME/runs``,
``/api/compare``): runs sorted, filtered and paged on the server, so that a study of
100,000 runs answers a page at a time, and a few runs' curves and differing settings side
by side. Read through the store's read-only connection, as the rest of :mod:`optlab.serve.data`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from optlab.errors import OptlabError
from optlab.serve.data import NotFound, clean, open_named_study
from optlab.store.core import STATES, reading
from optlab.study import paths

# What the runs table sorts and filters by: each summary column (and seconds trained), and
# any config column of the runs view (``optimizer_lr``, or its path ``optimizer.lr``).
SUMMARY = {
    "run_id": "r.run_id",
    "block": "r.block",
    "seed": "r.seed",
    "status": "r.status",
    "epoch": "s.epochs_done",
    "epochs": "r.epochs",
    "best_test_acc": "s.best_test_acc",
    "final_test_acc": "s.final_test_acc",
    "final_train_loss": "s.final_train_loss",
    "final_test_loss": "s.final_test_loss",
    "seconds": "s.train_seconds",
}
MAX_PAGE = 5000  # runs one answer lists at most
# The page's own parameters, kept in its address beside the runs table's: its token, the
# runs it compares, the profile's target, time and order, and the charts' metric.
PAGE_KEYS = ("token", "compare", "target", "time", "order", "metric")


class BadRequest(OptlabError):
    """A runs query the API cannot answer as asked: a column, state or bound that is not."""


@dataclasses.dataclass
class RunsQuery:
    """What the runs table asks: ``sort`` (a column, ``-COLUMN`` descending), ``states``,
    ``block``, ``bounds`` ({column: (lowest, highest)}), ``match`` (axis values, as
    text: a chart cell's, or those a brush spans; a run matches one of each axis's), and
    the page (``limit``, ``offset``)."""

    sort: str | None = None
    states: list[str] = dataclasses.field(default_factory=list)
    block: str | None = None
    bounds: dict[str, tuple[float | None, float | None]] = dataclasses.field(default_factory=dict)
    match: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    limit: int = 500
    offset: int = 0


def runs_query(params: list[tuple[str, str]]) -> RunsQuery:
    """The query parameters of ``/api/studies/NAME/runs``: ``sort``, ``state`` (repeatable
    or comma-separated), ``block``, ``min_COLUMN``/``max_COLUMN``, ``limit``, ``offset``;
    any other (but the page's own) is an axis whose value a run must have (repeated: one
    of them)."""
    asked = RunsQuery()
    for key, value in params:
        if key in PAGE_KEYS:
            continue
        if key == "sort":
            asked.sort = value
        elif key == "state":
            asked.states += [v for v in value.split(",") if v]
        elif key == "block":
            asked.block = value
        elif key in ("limit", "offset"):
            number = _whole(key, value)
            setattr(asked, key, min(number, MAX_PAGE) if key == "limit" else number)
        elif key.startswith(("min_", "max_")):
            low, high = asked.bounds.get(key[4:], (None, None))
            bound = _number(key, value)
            asked.bounds[key[4:]] = (bound, high) if key.startswith("min_") else (low, bound)
        else:
            asked.match.setdefault(key, []).append(value)
    return asked


def _whole(key: str, value: str) -> int:
    if not value.isdigit():
        raise BadRequest(f"{key} {value!r}: give a whole number >= 0")
    return int(value)


def _number(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"{key} {value!r}: give a number") from None


def _column(con: Any, name: str, label: str, axes: Any = ()) -> str:
    """The SQL of a sortable column; a bad name is one line with what can be used."""
    if name in SUMMARY:
        return SUMMARY[name]
    configs = [c for (c,) in con.execute("select column_name from (describe runs)").fetchall()]
    column = name.replace(".", "_")
    if column in configs and column not in ("config", "axes", "study"):
        return f'r."{column}"'
    if name in axes:  # an axis that is no config path: its value as the run records it
        return f"try_cast(json_extract_string(r.axes, {_json_path(name)}) as double)"
    raise BadRequest(
        f"{label}: {name!r} is not a column of the runs table; use one of "
        f"{', '.join(SUMMARY)}, or a config column such as optimizer_lr (optimizer.lr)"
    )


def study_runs(store: Path, name: str, asked: RunsQuery | None = None) -> dict[str, Any]:
    """The study's runs, a page of them, with their summary: filtered by state, block,
    bounds on columns and a chart cell's axis values, sorted by any column (then by the
    study's order), and how many match (``total``). Without a cell to match, the store
    gives only the page asked for (a study may hold 100,000 runs)."""
    asked = asked or RunsQuery()
    bad = [s for s in asked.states if s not in STATES]
    if bad:
        raise BadRequest(f"state {bad[0]!r}: not a state; use one of {', '.join(STATES)}")
    with open_named_study(store, name) as (con, name, axes):
        where, args = ["r.study = ?"], [name]
        if asked.block is not None:
            where.append("r.block = ?")
            args.append(asked.block)
        if asked.states:
            where.append("r.status in (select unnest(?))")
            args.append(asked.states)
        for key, given in asked.match.items():  # a superset here; exact below
            where.append(_match_sql(key, given, args))
        for column, (low, high) in asked.bounds.items():
            sql = _column(con, column, f"min_{column}/max_{column}", axes)
            if low is not None:
                where.append(f"{sql} >= ?")
                args.append(low)
            if high is not None:
                where.append(f"{sql} <= ?")
                args.append(high)
        order = "r.position"
        if asked.sort:
            key = asked.sort.removeprefix("-")
            direction = "desc" if asked.sort.startswith("-") else "asc"
            order = f"{_column(con, key, 'sort', axes)} {direction} nulls last, r.position"
        page = "" if asked.match else f" limit {asked.limit} offset {asked.offset}"
        condition = " and ".join(where)
        rows = con.execute(
            "select r.run_id, r.block, r.seed, r.status, r.axes, s.epochs_done, r.epochs, "
            "s.best_test_acc, s.final_test_acc, s.final_train_loss, s.train_seconds, r.config "
            "from runs r join run_summary s using (study, run_id) "
            f"where {condition} order by {order}{page}",
            args,
        ).fetchall()
        # Counted without the summary (every run's epochs) unless a bound reads it.
        joined = " join run_summary s using (study, run_id)" if "s." in condition else ""
        (total,) = con.execute(
            f"select count(*) from runs r{joined} where {condition}", args
        ).fetchone()
    runs = []
    for run_id, block, seed, status, axes, done, epochs, best, final, loss, took, config in rows:
        values = json.loads(axes or "{}")
        if asked.match and not _matches(asked.match, block, values, config):
            continue
        runs.append(
            {
                "run_id": run_id,
                "block": block,
                "seed": seed,
                "status": status,
                "axes": values,
                "epoch": done,
                "epochs": epochs,
                "best_test_acc": best,
                "final_test_acc": final,
                "final_train_loss": loss,
                "seconds": took,
            }
        )
    if asked.match:
        total = len(runs)
        runs = runs[asked.offset : asked.offset + asked.limit]
    return clean({"study": name, "total": total, "runs": runs})


def _match_sql(key: str, given: list[str], args: list[Any]) -> str:
    """SQL that keeps at least the runs matching ``key`` (one of ``given``), so that the
    store, not Python, passes over a large study: its block, or its value of the axis
    (numbers within the tolerance :func:`_same` allows); a run whose block does not vary
    the axis is kept, for its config to be read."""
    if key == "block":
        args.append(given)
        return "r.block in (select unnest(?))"
    path = _json_path(key)
    value = f"json_extract_string(r.axes, {path})"
    try:
        numbers = [float(g) for g in given]
    except ValueError:
        args.append([g.lower() for g in given])
        return f"({value} is null or lower({value}) in (select unnest(?)))"
    near = []
    for n in numbers:
        near.append(f"abs(try_cast({value} as double) - ?) <= ?")
        args += [n, 1e-5 * abs(n) + 1e-300]
    return f"({value} is null or try_cast({value} as double) is null or {' or '.join(near)})"


def _matches(match: dict[str, list[str]], block: str, axes: dict[str, Any], config: str) -> bool:
    """Whether a run has one of the values given of each axis named, and of its block (its
    config's value, for an axis its own block does not vary: a panel of other blocks
    names it)."""
    flat = None
    for key, given in match.items():
        if key == "block":
            value: Any = block
        elif key in axes:
            value = axes[key]
        else:
            flat = flat if flat is not None else paths.flatten(json.loads(config or "{}"))
            value = flat.get(key)
        if not any(_same(value, one) for one in given):
            return False
    return True


def _same(value: Any, given: str) -> bool:
    """Whether a run's axis value is the one a link names (numbers as numbers: 1 is 1.0)."""
    if isinstance(value, bool):
        return given.lower() == str(value).lower()
    if isinstance(value, int | float):
        try:  # a chart prints 6 significant digits
            return math.isclose(float(given), float(value), rel_tol=1e-5)
        except ValueError:
            return False
    if isinstance(value, dict | list):
        return given == json.dumps(value, sort_keys=True)
    return given == str(value)


def _json_path(axis: str) -> str:
    """The SQL literal of the JSON path of ``axis`` in a run's axes (a dotted name is one key)."""
    key = axis.replace("\\", "\\\\").replace('"', '\\"').replace("'", "''")
    return f"'$.\"{key}\"'"


DISTINCT_SHOWN = 40  # an axis with more values than this is offered as a range


def axis_values(store: Path, name: str) -> dict[str, Any]:
    """What the runs table can be filtered by: the study's blocks, and each axis's values
    (up to :data:`DISTINCT_SHOWN`; past that, its lowest and highest), in order."""
    with open_named_study(store, name) as (con, name, axes):
        blocks = [
            b
            for (b,) in con.execute(
                "select block from runs where study = ? group by block order by min(position)",
                [name],
            ).fetchall()
        ]
        found = []
        for axis in axes:
            path = _json_path(axis)
            seen = con.execute(
                f"select distinct json_extract(axes, {path})::varchar from runs "
                f"where study = ? and json_extract(axes, {path}) is not null "
                f"limit {DISTINCT_SHOWN + 1}",
                [name],
            ).fetchall()
            values = sorted((json.loads(v) for (v,) in seen), key=_in_order)
            entry: dict[str, Any] = {"axis": axis, "values": values}
            if len(values) > DISTINCT_SHOWN:
                low, high = con.execute(
                    f"select min(v), max(v) from (select try_cast(json_extract_string(axes, "
                    f"{path}) as double) as v from runs where study = ?)",
                    [name],
                ).fetchone()
                entry = {"axis": axis, "values": None, "lowest": low, "highest": high}
            found.append(entry)
    return clean({"study": name, "blocks": blocks, "axes": found})


def _in_order(value: Any) -> tuple:
    """Numbers by value before text and the rest, by their text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, json.dumps(value, sort_keys=True))


RUN_ID = re.compile(r"[0-9a-f]{12}")
MAX_COMPARED = 50  # runs one comparison lays over each other at most


def compare(store: Path, ids: str) -> dict[str, Any]:
    """``/api/compare?runs=ID,ID,...``: each run's epoch rows, its config values that differ
    between the runs (``differs``), and the values they share (``same``), for laying their
    curves over each other beside a table of what tells them apart."""
    wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
    if not wanted:
        raise BadRequest("runs: give run ids, comma-separated (runs=ID,ID)")
    bad = [i for i in wanted if not RUN_ID.fullmatch(i)]
    if bad:
        raise BadRequest(f"runs: {bad[0]!r} is not a run id (12 hex digits)")
    if len(wanted) > MAX_COMPARED:
        raise BadRequest(f"runs: {len(wanted)} runs; compare at most {MAX_COMPARED}")
    with reading(store) as con:
        found = {
            run_id: (seed, config)
            for run_id, seed, config in con.execute(
                "select run_id, seed, config from run_state where run_id in (select unnest(?))",
                [wanted],
            ).fetchall()
        }
        missing = [i for i in wanted if i not in found]
        if missing:
            raise NotFound(f"no run {missing[0]!r} in {store}")
        cur = con.execute(
            "select * from epochs where run_id in (select unnest(?)) order by run_id, epoch",
            [wanted],
        )
        columns = [d[0] for d in cur.description]
        epochs = [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
    flat = {
        i: {"seed": found[i][0], **paths.flatten(json.loads(found[i][1] or "{}"))} for i in wanted
    }
    keys = sorted({k for f in flat.values() for k in f})
    differ = [
        k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1
    ]
    return clean(
        {
            "runs": [
                {
                    "run_id": i,
                    "differs": {k: flat[i].get(k) for k in differ},
                    "epochs": [e for e in epochs if e["run_id"] == i],
                }
                for i in wanted
            ],
            "same": {k: flat[wanted[0]].get(k) for k in keys if k not in differ},
        }
    )
