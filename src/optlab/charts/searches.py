"""Charts of a search: ``scatter`` (each searched dimension against the metric, one point
per configuration, validation and test side by side) and ``parallel`` (parallel coordinates
over the searched dimensions, each configuration a line coloured by the metric). A search's
points fall anywhere in their ranges, so a heatmap of them is a sparse grid; these are the
charts the report draws for a search block.

A configuration is a block's point (its values of every dimension): its value is the mean
over its runs of what each reached, stopped runs (halving) at their rung and diverged runs
before they diverged (every trial counts), and it is marked by the worst of its runs' ends.
Final blocks (``NAME/final``) confirm a selected point and are no search points: left out.
"""

from __future__ import annotations

import json
import math
from typing import Any

from optlab.analysis.results import (
    fetch_rows,
    jsonable,
    parse_metric,
    reduce_sql,
    validation_counterpart,
)
from optlab.charts.figures import Chart, Figure, Layout, Option, ReportFacts, Selection, layout
from optlab.errors import OptlabError
from optlab.states import State
from optlab.study.schema import FINAL_SUFFIX

# A configuration's mark: the worst end among its runs.
ENDS = (State.DIVERGED.value, State.FAILED.value, "stopped early", "not finished", "finished")
END_SHAPES = ("cross", "square", "triangle-down", "diamond", "circle")
END_DASHES = [[2, 2], [6, 2], [4, 4], [1, 3], [1, 0]]
RULE = (
    "each configuration: the mean over its runs of what each reached (stopped runs at their "
    "rung, diverged runs before they diverged), marked by the worst end among them"
)


def dimensions(axes: Any) -> list[str]:
    """The searched axes, in the study's order; with no search, every axis."""
    names = list(axes)
    return [a for a in names if a in getattr(axes, "searched", set())] or names


def points_sql(lay: Layout, dims: list[str], metrics: list[str]) -> str:
    """One row per block and configuration: each dimension's value (``d0``, ``d1``...),
    each metric's mean over the configuration's runs (``m0``, ``m1``), and its runs' ends."""
    dim_cols = ", ".join(f"{lay.sql(a)} as d{i}" for i, a in enumerate(dims))
    metric_cols = ", ".join(
        f"{reduce_sql(*parse_metric(m))} as m{i}" for i, m in enumerate(metrics)
    )
    d_names = ", ".join(f"d{i}" for i in range(len(dims)))
    means = ", ".join(
        f"avg(m{i}) filter (where isfinite(m{i})) as m{i}" for i in range(len(metrics))
    )
    return f"""with per_run as (
  select r.run_id, r.block, {lay.panel_sql} as panel, r.status, {dim_cols}, {metric_cols},
         max(e.epoch) as last
  from runs r left join epochs e using (run_id)
  where {lay.condition} and r.block not like '%{FINAL_SUFFIX}'
  group by all)
select panel, block, {d_names}, {means},
       count(*) as runs,
       count(*) filter (where status = 'done') as done,
       count(*) filter (where status = 'stopped') as stopped,
       count(*) filter (where status = 'diverged') as diverged,
       count(*) filter (where status = 'failed') as failed,
       max(last) filter (where status = 'stopped') as stopped_at
from per_run group by all order by panel, block, {d_names}"""


def _end(row: dict[str, Any]) -> str:
    if row["diverged"]:
        return State.DIVERGED.value
    if row["failed"]:
        return State.FAILED.value
    if row["stopped"]:
        return "stopped early"
    if row["done"] < row["runs"]:
        return "not finished"
    return "finished"


def _read(
    con: Any, study: str, axes: Any, metric: str, sel: Selection, chart: str
) -> tuple[Layout, list[str], list[str], str, list[dict[str, Any]]]:
    dims = dimensions(axes)
    if not dims:
        raise OptlabError(f"{chart}: study {study!r} varies no axis to draw")
    lay = layout(con, study, axes, dims, sel, chart)
    val = validation_counterpart(metric)
    (has_val,) = con.execute(
        f"select count(*) > 0 from runs r join epochs e using (run_id) "
        f"where {lay.condition} and e.{parse_metric(val)[1]} is not null"
        if val
        else "select false"
    ).fetchone()
    metrics = [val, metric] if has_val else [metric]
    sql = points_sql(lay, dims, metrics)
    rows = fetch_rows(con, sql)
    if not any(r[f"m{len(metrics) - 1}"] is not None for r in rows):
        raise OptlabError(f"study {study!r} has no runs with {metric} yet")
    for r in rows:
        r["end"] = _end(r)
    # A dimension the selected blocks do not have (AdamW's block has no momentum): not drawn.
    kept = [i for i in range(len(dims)) if any(r[f"d{i}"] is not None for r in rows)]
    for r in rows:
        for new, old in enumerate(kept):
            r[f"d{new}"] = r.pop(f"d{old}")
        for gone in range(len(kept), len(dims)):
            r.pop(f"d{gone}", None)
    return lay, [dims[i] for i in kept], metrics, sql, rows


def _scale(values: list[Any]):
    """A dimension's x scale: log where its positive values span a decade or more (symlog
    when 0 is among them, a weight decay's 'none'), linear otherwise; None for labels."""
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) < len(values):
        return None
    positive = [v for v in numbers if v > 0]
    if len(positive) >= 2 and max(positive) / min(positive) >= 10:
        if len(positive) == len(numbers):
            return alt.Scale(type="log")
        return alt.Scale(type="symlog", constant=min(positive))
    return alt.Scale(zero=False)


def scatter_figure(
    con: Any,
    study: str,
    axes: Any,
    metric: str = "best_test_acc",
    sel: Selection = Selection(),
) -> Figure:
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    lay, dims, metrics, sql, rows = _read(con, study, axes, metric, sel, "scatter")
    values = jsonable(rows)
    color = "panel" if len(lay.panels) > 1 else "block"
    cells = []
    for i, dim in enumerate(dims):
        scale = _scale([r[f"d{i}"] for r in rows if r[f"d{i}"] is not None])
        x = (
            alt.X(f"d{i}:Q", title=dim, scale=scale, axis=alt.Axis(format="~g"))
            if scale is not None
            else alt.X(f"d{i}:N", title=dim, sort="ascending")
        )
        row = []
        for j, m in enumerate(metrics):
            row.append(
                alt.Chart(alt.Data(values=values))
                .mark_point(filled=True, size=50, opacity=0.8)
                .encode(
                    x=x,
                    y=alt.Y(f"m{j}:Q", title=m, scale=alt.Scale(zero=False)),
                    color=alt.Color(f"{color}:N", title=color),
                    shape=alt.Shape(
                        "end:N",
                        title="end",
                        scale=alt.Scale(domain=list(ENDS), range=list(END_SHAPES)),
                    ),
                    tooltip=[
                        "block:N",
                        *(f"d{k}:N" for k in range(len(dims))),
                        *(f"m{k}:Q" for k in range(len(metrics))),
                        "runs:Q",
                        "end:N",
                        "stopped_at:Q",
                    ],
                )
                .transform_filter(f"isValid(datum.m{j})")
                .properties(width=300, height=220)
            )
        cells.append(alt.hconcat(*row))
    sides = (
        f"{metrics[0]} (what a selection reads) beside {metrics[1]}"
        if len(metrics) == 2
        else f"{metrics[0]} (no validation split: any choice from it is made on test)"
    )
    title = {
        "text": f"{study}: {sides}, against each searched dimension",
        "subtitle": [RULE, f"colour: {color}" + _pooled(lay)],
    }
    # usermeta: which dimension each d0, d1... is, for a page that filters by a point
    chart = alt.vconcat(*cells).properties(title=title, usermeta={"dimensions": dims})
    return Figure("scatter", chart, sql, len(rows), lay)


def _position(values: list[Any]) -> dict[Any, float]:
    """Each value's place in [0, 1] on its dimension's axis: log where it spans a decade
    (0 below the smallest positive value), linear otherwise, evenly by order for labels."""
    present = sorted({v for v in values if v is not None}, key=lambda v: (str(type(v)), v))
    numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) < len(present) or len(present) < 2:
        step = 1 / max(len(present) - 1, 1)
        return {v: i * step for i, v in enumerate(present)}
    positive = [v for v in numbers if v > 0]
    if len(positive) >= 2 and max(positive) / min(positive) >= 10:
        lo, hi = math.log10(min(positive)), math.log10(max(positive))
        low_end = 0.08 if len(positive) < len(numbers) else 0.0  # room for the zeros
        return {
            v: (0.0 if v <= 0 else low_end + (1 - low_end) * (math.log10(v) - lo) / (hi - lo))
            for v in numbers
        }
    lo, hi = min(numbers), max(numbers)
    return {v: (v - lo) / (hi - lo) for v in numbers}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ticks(places: dict[Any, float]) -> list[tuple[float, str]]:
    """Where a dimension's axis is labelled: every value of a choice (up to 8), else its
    ends (and 0)."""
    values = list(places)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if len(values) > 8 and numeric:
        values = [min(values), max(values)] + ([0] if 0 in places else [])
    return [(places[v], f"{v:.3g}" if numeric else str(v)) for v in dict.fromkeys(values)]


def parallel_figure(
    con: Any,
    study: str,
    axes: Any,
    metric: str = "best_test_acc",
    sel: Selection = Selection(),
) -> Figure:
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    lay, dims, metrics, sql, rows = _read(con, study, axes, metric, sel, "parallel")
    shown = metrics[0]  # the validation counterpart where there is one: what selection reads
    places = [_position([r[f"d{i}"] for r in rows]) for i in range(len(dims))]
    lines, ticks = [], []
    for n, r in enumerate(rows):
        for i, dim in enumerate(dims):
            if r[f"d{i}"] is None:
                continue
            value = r[f"d{i}"]
            lines.append(
                {
                    "point": n,
                    "block": r["block"],
                    "panel": r["panel"],
                    "dimension": dim,
                    "axis": i,
                    "place": places[i][value],
                    "value": str(value),
                    # the value itself where it is a number: what a brush on the page filters
                    "number": value if _is_number(value) else None,
                    "metric": r["m0"],
                    "end": r["end"],
                }
            )
    for i in range(len(dims)):
        ticks += [{"axis": i, "place": p, "label": t} for p, t in _ticks(places[i])]
    # Each dimension's axis at a whole x (a continuous x: a brush may span and select it).
    names = ", ".join(json.dumps(d) for d in dims)
    x = alt.X(
        "axis:Q",
        title=None,
        scale=alt.Scale(domain=[-0.25, len(dims) - 0.75]),
        axis=alt.Axis(
            values=list(range(len(dims))),
            labelExpr=f"[{names}][datum.value]",
            labelAngle=0,
            labelLimit=0,
            grid=False,
            ticks=False,
            domain=False,
        ),
    )
    y = alt.Y("place:Q", axis=None, scale=alt.Scale(domain=[0, 1]))
    drawn = (
        alt.Chart(alt.Data(values=jsonable(lines)))
        .mark_line(opacity=0.7)
        .encode(
            x=x,
            y=y,
            detail="point:N",
            color=alt.Color("metric:Q", title=shown, scale=alt.Scale(scheme="viridis")),
            strokeDash=alt.StrokeDash(
                "end:N", title="end", scale=alt.Scale(domain=list(ENDS), range=END_DASHES)
            ),
            tooltip=["block:N", "dimension:N", "value:N", "metric:Q", "end:N"],
        )
    )
    axis_rules = (
        alt.Chart(alt.Data(values=[{"axis": i} for i in range(len(dims))]))
        .mark_rule(color="#888")
        .encode(x=x)
    )
    labels = (
        alt.Chart(alt.Data(values=ticks))
        .mark_text(align="left", dx=4, fontSize=9, color="#444")
        .encode(x=x, y=y, text="label:N")
    )
    title = {
        "text": f"{study}: the searched dimensions, each configuration a line coloured by {shown}",
        "subtitle": [
            RULE,
            (
                f"{shown}: what a selection reads"
                if len(metrics) == 2
                else f"{shown}: no validation split, so any choice from it is made on test"
            )
            + "; axes in log scale where a dimension spans a decade (0 at the foot)"
            + _pooled(lay),
        ],
    }
    chart = (
        alt.layer(axis_rules, drawn, labels)
        .properties(width=max(140 * len(dims), 420), height=320)
        .properties(title=title)
    )
    return Figure("parallel", chart, sql, len(rows), lay)


def _pooled(lay: Layout) -> str:
    return f"; POOLED over {', '.join(lay.pooled)}" if lay.pooled else ""


def _in_report(facts: ReportFacts) -> list[tuple[str, dict[str, Any]]]:
    return [("", {})] if getattr(facts.axes, "searched", None) else []


METRIC = Option(
    "metric",
    "best_test_acc",
    "REDUCER_COLUMN per run; its validation counterpart (best_val_acc for best_test_acc) is "
    "drawn too where the runs have one.",
    metric=True,
)

CHARTS = (
    Chart(
        "scatter",
        scatter_figure,
        "Each searched dimension against the metric, a point per configuration (stopped and "
        "diverged marked), validation and test side by side: a search block's chart.",
        (METRIC,),
        report=_in_report,
    ),
    Chart(
        "parallel",
        parallel_figure,
        "Parallel coordinates over the searched dimensions, a line per configuration "
        "coloured by the (validation) metric: a search block's chart.",
        (METRIC,),
        report=_in_report,
    ),
)
