"""Line charts: learning curves and the metric against the learning rate (sensitivity).
The scaling chart has its own module (:mod:`optlab.charts.scaling`).
"""

from __future__ import annotations

from typing import Any

from optlab.analysis.results import fetch_rows, parse_metric, reduce_sql
from optlab.charts.drawing import (
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
    Selection,
    layout,
    when_varied,
)
from optlab.errors import OptlabError
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
        report=when_varied(),
    ),
    Chart(
        "sensitivity",
        sensitivity_figure,
        "The final metric against the learning rate, per optimizer; mean with a 95% CI.",
        (Option("metric", "final_test_acc", "REDUCER_COLUMN per run.", metric=True), COLOR),
        report=when_varied(LR),
    ),
)
