"""Line charts: learning curves, the metric against the learning rate (sensitivity), and the
optimal LR against the batch size (scaling).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optlab.analysis.results import fetch_rows, jsonable, parse_metric, reduce_sql
from optlab.charts.drawing import (
    BATCH,
    CURVE_COLUMNS,
    LR,
    X_CHOICES,
    axis,
    ci_sql,
    colour,
    line_band,
    metric_bounds,
)
from optlab.charts.figures import (
    COLOR,
    Chart,
    Figure,
    Layout,
    Option,
    ReportFacts,
    Selection,
    layout,
)
from optlab.errors import OptlabError
from optlab.store.core import config_column
from optlab.study.steps import start_lr_sql

# ---- curves -------------------------------------------------------------------------------


def curves_sql(lay: Layout, metric: str, x: str, color_sql: str) -> str:
    x_expr = {
        "epoch": "e.epoch",
        "step": "e.step",
        "samples": "e.samples",
        "seconds": "e.seconds_so_far",
        "comm_rounds": "e.comm_rounds",
    }[x]
    inner = f"""select {lay.panel_sql} as panel, {color_sql} as color, e.epoch,
         {x_expr} as xv, e.{metric} as v
  from runs r join e using (run_id)
  where {lay.condition} and r.status in ('done', 'running', 'interrupted', 'stopped')
    and e.{metric} is not null and isfinite(e.{metric})"""
    body = ci_sql(inner, "panel, color, epoch", metric_bounds(metric)).replace(
        "avg(v) as mean", "avg(xv) as x, avg(v) as mean"
    )
    return f"""with e as (
  select *, sum(seconds) over (partition by run_id order by epoch) as seconds_so_far
  from epochs),
{body}"""


def curves_figure(
    con: Any,
    study: str,
    axes: list[str],
    metric: str = "test_acc",
    x: str = "epoch",
    color: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    if metric not in CURVE_COLUMNS:
        raise OptlabError(
            f"--metric {metric!r}: not an epochs column; use one of {', '.join(CURVE_COLUMNS)}"
        )
    if x not in X_CHOICES:
        raise OptlabError(f"--x {x!r}: use one of {', '.join(X_CHOICES)}")
    color, color_sql, shown = colour(axes, color, [])
    lay = layout(con, study, axes, shown, sel, "curves")
    sql = curves_sql(lay, metric, x, color_sql)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no epochs with {metric} yet")
    chart = line_band(rows, x, metric, f"{study}: {metric} against {x}", lay, color=color)
    return Figure("curves", chart, sql, len(rows), lay)


# ---- sensitivity --------------------------------------------------------------------------


def sensitivity_sql(lay: Layout, metric: str, color_sql: str) -> str:
    reducer, column = parse_metric(metric)
    return f"""with per_run as (
  select r.run_id, {lay.panel_sql} as panel, {color_sql} as color,
         {start_lr_sql()} as x, {reduce_sql(reducer, column)} as v
  from runs r join epochs e using (run_id)
  where {lay.condition} and r.status = 'done'
  group by all),
{
        ci_sql(
            "select * from per_run where v is not null and isfinite(v)",
            "panel, color, x",
            metric_bounds(column),
        )
    }"""


def sensitivity_figure(
    con: Any,
    study: str,
    axes: list[str],
    metric: str = "final_test_acc",
    color: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    axis(axes, LR, "sensitivity")
    color, color_sql, shown = colour(axes, color, [LR])
    lay = layout(con, study, axes, [LR, *shown], sel, "sensitivity")
    sql = sensitivity_sql(lay, metric, color_sql)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no finished runs yet")
    chart = line_band(
        rows, LR, metric, f"{study}: {metric} against learning rate", lay, log_x=True, color=color
    )
    return Figure("sensitivity", chart, sql, len(rows), lay)


# ---- scaling ------------------------------------------------------------------------------


def scaling_sql(lay: Layout, metric: str, color_sql: str) -> str:
    reducer, column = parse_metric(metric)
    better = "arg_max" if column.endswith("_acc") else "arg_min"
    tie = "-lr" if better == "arg_max" else "lr"  # equal values: the smaller LR
    return f"""with per_run as (
  select {lay.panel_sql} as panel, {color_sql} as color,
         r."{config_column(BATCH)}" as batch_size, {start_lr_sql()} as lr,
         {reduce_sql(reducer, column)} as value
  from runs r join epochs e using (run_id)
  where {lay.condition} and r.status = 'done'
  group by all),
cells as (
  select panel, color, batch_size, lr, avg(value) as value, count(*) as seeds
  from per_run where value is not null and isfinite(value) group by all)
select panel, color, batch_size, {better}(lr, [value, {tie}]) as optimal_lr,
       {better.replace("arg_", "")}(value) as value, min(seeds) as seeds
from cells group by all order by panel, color, batch_size"""


def scaling_figure(
    con: Any,
    study: str,
    axes: list[str],
    metric: str = "best_test_acc",
    color: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    for needed in (LR, BATCH):
        if needed not in axes:
            raise OptlabError(
                f"scaling: needs the study to vary {LR} and {BATCH}; study "
                f"{study!r} varies {', '.join(axes) or 'nothing'}"
            )
    color, color_sql, shown = colour(axes, color, [LR, BATCH])
    lay = layout(con, study, axes, [LR, BATCH, *shown], sel, "scaling")
    sql = scaling_sql(lay, metric, color_sql)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no finished runs yet")
    fits, lines = [], []
    for panel in lay.panels:
        for line in sorted({r["color"] for r in rows if r["panel"] == panel}):
            pts = [r for r in rows if (r["panel"], r["color"]) == (panel, line) and r["optimal_lr"]]
            if len(pts) < 2 or len({p["batch_size"] for p in pts}) < 2:
                continue
            lx = np.log([p["batch_size"] for p in pts])
            ly = np.log([p["optimal_lr"] for p in pts])
            slope, icpt = np.polyfit(lx, ly, 1) if np.ptp(ly) > 0 else (0.0, ly[0])
            name = " ".join(
                n for n in (panel if len(lay.panels) > 1 else "", line if color else "") if n
            )
            fits.append(f"{name + ': ' if name else ''}slope {slope:.2f}")
            ends = (min(p["batch_size"] for p in pts), max(p["batch_size"] for p in pts))
            lines += [
                {
                    "panel": panel,
                    "color": line,
                    "batch_size": float(b),
                    "fit": float(np.exp(icpt) * b**slope),
                }
                for b in ends
            ]
    log = alt.Scale(type="log")
    points = (
        alt.Chart()
        .mark_point(filled=True, size=60)
        .encode(
            x=alt.X("batch_size:Q", scale=log, title=BATCH),
            y=alt.Y("optimal_lr:Q", scale=log, title="optimal " + LR),
            color=alt.Color("color:N", title=color or "", legend=alt.Legend(labelLimit=0)),
            tooltip=["panel:N", "color:N", "batch_size:Q", "optimal_lr:Q", "value:Q", "seeds:Q"],
        )
    )
    fit = (
        alt.Chart()
        .mark_line(strokeDash=[4, 3])
        .encode(x="batch_size:Q", y="fit:Q", color="color:N")
        .transform_filter("isValid(datum.fit)")
    )
    data = alt.Data(values=jsonable(rows) + lines)
    title = {
        "text": f"{study}: optimal LR against batch size ({metric}; slope 1 = linear rule)",
        "subtitle": [
            f"{lay.pooling()} before the best LR is taken",
            "; ".join(fits) or "too few batch sizes to fit",
        ],
    }
    chart = alt.layer(points.transform_filter("isValid(datum.optimal_lr)"), fit, data=data)
    if len(lay.panels) == 1:
        chart = chart.properties(title=title, width=420, height=300)
    else:
        chart = chart.properties(width=320, height=220).facet(
            facet=alt.Facet("panel:N", sort=lay.panels, title=None),
            columns=min(3, len(lay.panels)),
            title=title,
        )
    return Figure("scaling", chart, sql, len(rows), lay)


def _when(*needed: str):
    """The report draws the chart once (with its defaults) when the study varies these."""

    def in_report(facts: ReportFacts) -> list[tuple[str, dict[str, Any]]]:
        return [("", {})] if all(a in facts.axes for a in needed) else []

    return in_report


CHARTS = (
    Chart(
        "curves",
        curves_figure,
        "A metric against epoch, steps, samples or seconds; mean over seeds with a 95% CI.",
        (
            Option("metric", "test_acc", "An epochs column: test_acc, train_loss, epoch_lr, ..."),
            Option("x", "epoch", "epoch, step, samples, seconds or comm_rounds."),
            COLOR,
        ),
        report=_when(),
    ),
    Chart(
        "sensitivity",
        sensitivity_figure,
        "The final metric against the learning rate, per optimizer; mean with a 95% CI.",
        (Option("metric", "final_test_acc", "REDUCER_COLUMN per run.", metric=True), COLOR),
        report=_when(LR),
    ),
    Chart(
        "scaling",
        scaling_figure,
        "The optimal LR against batch size, log-log, with the fitted slope per line.",
        (Option("metric", "best_test_acc", "REDUCER_COLUMN per run.", metric=True), COLOR),
        report=_when(LR, BATCH),
    ),
)
