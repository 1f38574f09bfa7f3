"""Gradient charts (seed 004): samples (SFO) to reach a full gradient norm epsilon per
schedule, and the full gradient norm against epochs, steps or samples.
"""

from __future__ import annotations

from typing import Any

from optlab.analysis.results import fetch_rows, jsonable
from optlab.charts.drawing import BAND, cell_expr, ci_sql, color_order
from optlab.charts.figures import Chart, Figure, Layout, Option, ReportFacts, Selection, layout
from optlab.charts.probe_charts import require_probe
from optlab.errors import OptlabError

# ---- sfo ----------------------------------------------------------------------------------


def sfo_sql(lay: Layout, axes: list[str], epsilon: float) -> str:
    return f"""with cells as (
  select {cell_expr(axes)} as schedule, avg(g.sfo) as mean, stddev_samp(g.sfo) as std,
         count(g.sfo) as reached, count(*) as runs
  from reach_grad_norm({epsilon!r}) g join runs r using (study, run_id)
  where {lay.condition} and g.status = 'done'
  group by all)
select c.*, c.mean - q.t975 * c.std / sqrt(c.reached) as low,
       c.mean + q.t975 * c.std / sqrt(c.reached) as high
from cells c left join t_quantiles q on q.df = c.reached - 1
order by mean nulls last, schedule"""


def sfo_figure(
    con: Any, study: str, axes: list[str], epsilon: float | None, sel: Selection = Selection()
) -> Figure:
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    if epsilon is None or not epsilon > 0:
        raise OptlabError(
            "sfo: give --epsilon, the full gradient norm to reach (a positive number)"
        )
    require_probe(con, study, "full_grad_norm")
    # Every axis is on the chart (one bar per cell): nothing is pooled but seeds.
    lay = layout(con, study, axes, ["block", *axes], Selection(sel.where, sel.blocks, ()), "sfo")
    sql = sfo_sql(lay, axes, epsilon)
    rows = fetch_rows(con, sql)
    for r in rows:
        r["label"] = f"{r['reached']}/{r['runs']} reached"
        r["end"] = r["high"] if r["high"] is not None else (r["mean"] or 0)
    base = alt.Chart(alt.Data(values=jsonable(rows))).encode(
        y=alt.Y("schedule:N", sort=None, title="schedule")
    )
    bars = base.mark_bar().encode(
        x=alt.X("mean:Q", title=f"SFO to reach |grad| <= {epsilon:g}"),
        tooltip=["schedule:N", "mean:Q", "std:Q", "low:Q", "high:Q", "reached:Q", "runs:Q"],
    )
    whiskers = (
        base.mark_rule().encode(x="low:Q", x2="high:Q").transform_filter("isValid(datum.low)")
    )
    text = base.mark_text(align="left", dx=4).encode(x=alt.X("end:Q"), text="label:N")
    chart = (bars + whiskers + text).properties(
        title=f"{study}: samples (SFO) to reach full gradient norm <= {epsilon:g} (mean over "
        "the seeds that reached it; whiskers = its 95% t-interval)",
        width=420,
        height=max(30 * len(rows), 120),
    )
    return Figure("sfo", chart, sql, len(rows), lay)


def gradnorm_sql(lay: Layout, axes: list[str], x: str) -> str:
    inner = f"""select {cell_expr(axes)} as color, 'all' as panel, p.epoch,
         e.{x} as xv, p.value as v
  from probes p join runs r using (run_id)
  join epochs e on e.run_id = p.run_id and e.epoch = p.epoch
  where {lay.condition} and r.status in ('done', 'running', 'interrupted')
    and p.probe = 'full_grad_norm' and p.key = 'global' and isfinite(p.value)"""
    return "with " + ci_sql(inner, "panel, color, epoch").replace(
        "avg(v) as mean", "avg(xv) as x, avg(v) as mean"
    )


def gradnorm_figure(
    con: Any,
    study: str,
    axes: list[str],
    epsilon: float | None,
    x: str = "sfo",
    sel: Selection = Selection(),
) -> Figure:
    """Seed 004's figure: full gradient norm against SFO per schedule, log-log, with the
    epsilon line and where each schedule first reaches it (mean SFO over seeds)."""
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    if x not in ("sfo", "sfo_full_batches", "step", "epoch"):
        raise OptlabError(f"--x {x!r}: use sfo, sfo_full_batches, step or epoch")
    if epsilon is not None and not epsilon > 0:
        raise OptlabError("--epsilon: the full gradient norm to reach, a positive number")
    require_probe(con, study, "full_grad_norm")
    lay = layout(
        con, study, axes, ["block", *axes], Selection(sel.where, sel.blocks, ()), "gradnorm"
    )
    sql = gradnorm_sql(lay, axes, x)
    rows = [r for r in fetch_rows(con, sql) if (r["x"] or 0) > 0]
    if not rows:
        raise OptlabError(f"study {study!r} has no full_grad_norm values after training started")
    order = color_order(rows)
    scale = alt.Scale(type="log")
    base = alt.Chart().encode(
        x=alt.X("x:Q", scale=scale, title=x),
        color=alt.Color("color:N", title="schedule", sort=order, legend=alt.Legend(labelLimit=0)),
    )
    line = base.mark_line(point=len(rows) < 200).encode(
        y=alt.Y("mean:Q", scale=scale, title="full gradient norm"),
        tooltip=["color:N", "epoch:Q", "x:Q", "mean:Q", "n:Q"],
    )
    layers = [line]
    if any((r["low"] or 0) > 0 for r in rows):  # a log scale draws only positive bands
        layers.insert(
            0,
            base.mark_area(opacity=0.2)
            .encode(y="low:Q", y2="high:Q")
            .transform_filter("datum.low > 0"),
        )
    subtitle = [f"mean over seeds; {BAND}"]
    if epsilon is not None:
        at = {
            "sfo": "g.sfo",
            "sfo_full_batches": "e.sfo_full_batches",
            "step": "g.steps",
            "epoch": "g.epoch",
        }[x]
        reach = fetch_rows(
            con,
            f"""select {cell_expr(axes)} as color, avg({at}) as x,
       count(g.epoch) as reached, count(*) as runs
from reach_grad_norm({epsilon!r}) g join runs r using (study, run_id)
left join epochs e on e.run_id = g.run_id and e.epoch = g.epoch
where {lay.condition} and g.status = 'done' group by all order by color""",
        )
        crossings = [
            {
                "color": r["color"],
                "x": r["x"],
                "eps": epsilon,
                "label": f"{r['reached']}/{r['runs']} reached",
            }
            for r in reach
            if r["x"] is not None
        ]
        rule = (
            alt.Chart(alt.Data(values=[{"eps": epsilon}]))
            .mark_rule(strokeDash=[4, 3], color="black")
            .encode(y="eps:Q")
        )
        marks = (
            alt.Chart(alt.Data(values=jsonable(crossings)))
            .mark_point(shape="diamond", size=120, filled=True, stroke="black")
            .encode(
                x="x:Q",
                y="eps:Q",
                color=alt.Color("color:N", sort=order, legend=alt.Legend(labelLimit=0)),
                tooltip=["color:N", "x:Q", "label:N"],
            )
        )
        layers += [rule, marks]
        subtitle.append(
            f"dashed: epsilon = {epsilon:g}; diamonds: mean {x} over the seeds "
            "that reached it (first probed epoch at or below epsilon)"
        )
    chart = alt.layer(*layers, data=alt.Data(values=jsonable(rows))).properties(
        title={"text": f"{study}: full gradient norm against {x}", "subtitle": subtitle},
        width=480,
        height=320,
    )
    return Figure("gradnorm", chart, sql, len(rows), lay)


def _sfo_in_report(facts: ReportFacts) -> list[tuple[str, dict[str, Any]]]:
    if "full_grad_norm" in facts.probes and facts.epsilon is not None:
        return [("", {"epsilon": facts.epsilon})]
    return []


CHARTS = (
    Chart(
        "sfo",
        sfo_figure,
        "Samples (SFO) to reach a full gradient norm <= epsilon, one bar per cell.",
        (Option("epsilon", None, "The full gradient norm to reach.", float),),
        facet=False,
        report=_sfo_in_report,
    ),
    Chart(
        "gradnorm",
        gradnorm_figure,
        "Full gradient norm against SFO per schedule (seed 004's figure), log-log, with the "
        "epsilon line and each schedule's crossing.",
        (
            Option(
                "epsilon",
                None,
                "Mark where each schedule first reaches this full gradient norm.",
                float,
            ),
            Option("x", "sfo", "sfo, sfo_full_batches, step or epoch."),
        ),
        facet=False,
    ),
)
