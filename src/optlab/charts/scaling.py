"""The scaling chart: where an LR grid was tried at each batch size, the optimal LR against
the batch size (log-log, a fitted slope per line); where the LR follows a batch scaling rule
(``lr_scaling``: seed 001's experiment 3), no LR was chosen, so such runs are drawn as what
the rule is judged by: the metric per batch size against the rule's reference batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optlab.analysis.results import fetch_rows, jsonable, parse_metric, reduce_sql
from optlab.charts.drawing import BAND, BATCH, LR, ci_sql, colour, metric_bounds
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
from optlab.store.core import config_column
from optlab.study.steps import start_lr_sql

# A run whose LR a batch scaling rule sets (lr_scaling linear or sqrt): no LR was searched.
RULED = "coalesce(json_extract_string(r.config, '$.lr_scaling'), 'none') <> 'none'"
OPTIMAL = "optimal LR"
PER_BATCH = "metric per batch size"


def scaling_sql(lay: Layout, metric: str, color_sql: str) -> str:
    """One row per panel, colour and batch size: ``part`` 'optimal LR' (searched runs: the
    LR of the best mean over seeds) or 'metric per batch size' (runs under a scaling rule:
    the metric's mean over seeds and its band)."""
    reducer, column = parse_metric(metric)
    better = "arg_max" if column.endswith("_acc") else "arg_min"
    tie = "-lr" if better == "arg_max" else "lr"  # equal values: the smaller LR
    per_batch = ci_sql(
        "select panel, color, batch_size, reference, value as v from per_run where ruled",
        "panel, color, batch_size, reference",
        metric_bounds(column),
    )
    return f"""with per_run as (
  select r.run_id, {lay.panel_sql} as panel, {color_sql} as color,
         r."{config_column(BATCH)}" as batch_size, {start_lr_sql()} as lr,
         {RULED} as ruled,
         try_cast(json_extract(r.config, '$.lr_reference_batch') as double) as reference,
         {reduce_sql(reducer, column)} as value
  from runs r join epochs e using (run_id)
  where {lay.condition} and r.status = 'done'
  group by all
  having value is not null and isfinite(value)),
cells as (
  select panel, color, batch_size, lr, avg(value) as value, count(*) as seeds
  from per_run where not ruled group by all),
optimal as (
  select panel, color, batch_size, {better}(lr, [value, {tie}]) as optimal_lr,
         {better.replace("arg_", "")}(value) as value, min(seeds) as seeds
  from cells group by all),
ruled as (
  with {per_batch})
select '{OPTIMAL}' as part, * from optimal
union all by name
select '{PER_BATCH}' as part, * from ruled
order by part, panel, color, batch_size"""


def scaling_figure(
    con: Any,
    study: str,
    axes: list[str],
    metric: str = "best_test_acc",
    color: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    _needs(con, study, axes)
    color, color_sql, shown = colour(axes, color, [LR, BATCH])
    lay = layout(con, study, axes, [LR, BATCH, *shown], sel, "scaling")
    sql = scaling_sql(lay, metric, color_sql)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no finished runs yet")
    parts = []
    searched = [r for r in rows if r["part"] == OPTIMAL]
    if searched:
        parts.append(_optimal_chart(searched, lay, study, metric, color))
    ruled = [r for r in rows if r["part"] == PER_BATCH]
    if ruled:
        parts.append(_per_batch_chart(ruled, lay, study, metric, color))
    chart = parts[0] if len(parts) == 1 else alt.vconcat(*parts)
    return Figure("scaling", chart, sql, len(rows), lay)


def _needs(con: Any, study: str, axes: list[str]) -> None:
    """A batch-size axis, and an LR axis unless the runs follow a scaling rule."""
    (ruled,) = con.execute(
        f"select count(*) filter ({RULED}) from runs r where r.study = ?", [study]
    ).fetchone()
    needed = [BATCH] if ruled and LR not in axes else [LR, BATCH]
    if any(n not in axes for n in needed):
        raise OptlabError(
            f"scaling: needs the study to vary {' and '.join(needed)}; study {study!r} "
            f"varies {', '.join(axes) or 'nothing'}"
        )


def _panels(rows: list[dict[str, Any]], lay: Layout) -> list[str]:
    return [p for p in lay.panels if any(r["panel"] == p for r in rows)]


def _arrange(chart: Any, panels: list[str], title: dict[str, Any], size: tuple[int, int]):
    if len(panels) == 1:
        return chart.properties(title=title, width=size[0], height=size[1])
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    return chart.properties(width=320, height=220).facet(
        facet=alt.Facet("panel:N", sort=panels, title=None),
        columns=min(3, len(panels)),
        title=title,
    )


def _optimal_chart(rows: list[dict[str, Any]], lay: Layout, study: str, metric: str, color):
    """The optimal LR against batch size, log-log, with a fitted slope per line."""
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    panels = _panels(rows, lay)
    fits, lines = [], []
    for panel in panels:
        for line in sorted({r["color"] for r in rows if r["panel"] == panel}):
            pts = [r for r in rows if (r["panel"], r["color"]) == (panel, line) and r["optimal_lr"]]
            if len(pts) < 2 or len({p["batch_size"] for p in pts}) < 2:
                continue
            lx = np.log([p["batch_size"] for p in pts])
            ly = np.log([p["optimal_lr"] for p in pts])
            slope, icpt = np.polyfit(lx, ly, 1) if np.ptp(ly) > 0 else (0.0, ly[0])
            name = " ".join(
                n for n in (panel if len(panels) > 1 else "", line if color else "") if n
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
    title = {
        "text": f"{study}: optimal LR against batch size ({metric}; slope 1 = linear rule)",
        "subtitle": [
            f"{lay.pooling()} before the best LR is taken",
            "; ".join(fits) or "too few batch sizes to fit",
        ],
    }
    data = alt.Data(values=jsonable(rows) + lines)
    chart = alt.layer(points.transform_filter("isValid(datum.optimal_lr)"), fit, data=data)
    return _arrange(chart, panels, title, (420, 300))


def _per_batch_chart(rows: list[dict[str, Any]], lay: Layout, study: str, metric: str, color):
    """Runs whose LR a scaling rule set: the metric per batch size (mean over seeds, its
    band) and, dashed, the mean at the rule's reference batch (the middle batch size where
    the rule names none that was run), which each batch size is judged against."""
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    panels = _panels(rows, lay)
    for panel in panels:
        for line in {r["color"] for r in rows if r["panel"] == panel}:
            own = sorted(
                (r for r in rows if (r["panel"], r["color"]) == (panel, line)),
                key=lambda r: r["batch_size"],
            )
            ref = next((r for r in own if r["batch_size"] == own[0]["reference"]), None)
            ref = ref or own[len(own) // 2]
            for r in own:
                r["reference_batch"], r["reference_mean"] = ref["batch_size"], ref["mean"]
    base = alt.Chart().encode(
        x=alt.X("batch_size:Q", scale=alt.Scale(type="log"), title=BATCH),
        color=alt.Color("color:N", title=color or "", legend=alt.Legend(labelLimit=0)),
    )
    layers = [
        base.mark_line(point=True).encode(
            y=alt.Y("mean:Q", title=metric, scale=alt.Scale(zero=False)),
            tooltip=["panel:N", "color:N", "batch_size:Q", "mean:Q", "low:Q", "high:Q", "n:Q"],
        ),
        base.mark_line(strokeDash=[4, 3]).encode(y="reference_mean:Q"),
    ]
    if any(r.get("low") is not None for r in rows):
        layers.insert(0, base.mark_area(opacity=0.2).encode(y="low:Q", y2="high:Q"))
    refs = sorted({f"{r['reference_batch']:g}" for r in rows})
    title = {
        "text": f"{study}: {metric} per batch size, the LR set by the scaling rule",
        "subtitle": [
            f"{lay.pooling()}; {BAND}",
            f"dashed: the mean at the reference batch ({', '.join(refs)}); `optlab analyze "
            "scaling` tests each batch size against it (a drop, or equivalence by TOST)",
        ],
    }
    chart = alt.layer(*layers, data=alt.Data(values=jsonable(rows)))
    return _arrange(chart, panels, title, (480, 300))


CHARTS = (
    Chart(
        "scaling",
        scaling_figure,
        "The optimal LR against batch size, log-log, with the fitted slope per line; runs "
        "whose LR follows lr_scaling: the metric per batch size against the reference batch.",
        (Option("metric", "best_test_acc", "REDUCER_COLUMN per run.", metric=True), COLOR),
        report=when_varied(LR, BATCH),
    ),
)
