"""The charts: heatmap, curves, sensitivity, scaling, sfo, gradnorm and probes.

Each ``*_figure(con, study, axes, ...)`` runs one SQL query (kept in the figure, and
written next to the image) and draws its rows with Altair. Lines are the mean over seeds;
bands are a 95% t-interval of that mean (none with one seed). Blocks and axes that a chart
does not show get their own panels unless ``--facet`` says otherwise; what is then pooled
is named in the title and in the output line.
"""

from __future__ import annotations

from typing import Any

from optlab.analysis.results import axis_sql, fetch_rows, jsonable, parse_metric, reduce_sql
from optlab.charts.figures import Figure, Layout, Selection, label_sql, layout
from optlab.errors import OptlabError
from optlab.events import EPOCH_FIELDS
from optlab.store.core import config_column
from optlab.store.sql import q
from optlab.study.steps import start_lr_sql

X_CHOICES = ("epoch", "step", "samples", "seconds", "comm_rounds")
CURVE_COLUMNS = tuple(f for f in EPOCH_FIELDS if f != "epoch")
LR, BATCH = "optimizer.lr", "batch_schedule.batch_size"


def _axis(axes: list[str], value: str | None, option: str, default: str | None = None) -> str:
    value = value or default
    if value is None:
        raise OptlabError(f"{option}: name an axis; this study varies {', '.join(axes)}")
    if value not in axes:
        raise OptlabError(
            f"{option} {value}: the study does not vary it; it varies "
            f"{', '.join(axes) or 'nothing'}"
        )
    return value


def _default_color(axes: list[str], exclude: list[str]) -> str | None:
    for preferred in ("optimizer", "optimizer.name"):
        if preferred in axes and preferred not in exclude:
            return preferred
    rest = [a for a in axes if a not in exclude]
    return rest[0] if rest else None


def _color_sql(color: str | None, axes: Any = None) -> str:
    """The colour of a run's line: an axis' value, or one colour when no axis is left."""
    return f"({axis_sql(axes, color)})::varchar" if color else "'all'"


def _colour(
    axes: list[str], color: str | None, exclude: list[str]
) -> tuple[str | None, str, list[str]]:
    """(legend title, SQL of a run's colour, what the colour shows). ``block`` colours by
    block; ``cell`` by block and every axis (one line per cell: nothing left to pool, for
    blocks that vary different axes); else an axis, by default the optimizer."""
    if color == "block":
        return "block", "r.block", ["block"]
    if color == "cell":
        return "cell", _cell_expr(axes), ["block", *axes]
    color = _axis(axes, color, "--color") if color else _default_color(axes, exclude)
    return color, _color_sql(color, axes), [color] if color else []


def _ci_sql(inner: str, keys: str) -> str:
    """Mean, n and a 95% t-interval of the mean of ``v`` over the rows of each group."""
    return f"""agg as (
  select {keys}, avg(v) as mean, stddev_samp(v) as sd, count(*) as n
  from ({inner}) group by all)
select a.*, a.mean - q.t975 * a.sd / sqrt(a.n) as low, a.mean + q.t975 * a.sd / sqrt(a.n)
       as high
from agg a left join t_quantiles q on q.df = a.n - 1
order by {keys}"""


BAND = "band = 95% t-interval of the mean over n seeds (none when n = 1)"


def _line_band(
    rows: list[dict[str, Any]],
    x: str,
    y: str,
    title: str,
    lay: Layout,
    *,
    log_x: bool = False,
    color: str | None = None,
    y_title: str | None = None,
):
    import altair as alt

    scale = alt.Scale(type="log") if log_x else alt.Scale(zero=False)
    base = alt.Chart().encode(
        x=alt.X("x:Q", title=x, scale=scale),
        color=alt.Color(
            "color:N",
            title=color or "",
            sort=_color_order(rows),
            legend=alt.Legend(labelLimit=0),  # no cut: labels tell cells and tables apart
        ),
    )
    y_axis = alt.Y("mean:Q", title=y_title or y, scale=alt.Scale(zero=False))
    line = base.mark_line(point=len(rows) < 200).encode(
        y=y_axis, tooltip=["panel:N", "color:N", "x:Q", "mean:Q", "low:Q", "high:Q", "n:Q"]
    )
    layers = [line]
    if any(r.get("low") is not None for r in rows):  # none at all with one seed per point
        layers.insert(0, base.mark_area(opacity=0.2).encode(y="low:Q", y2="high:Q"))
    chart = alt.layer(*layers, data=alt.Data(values=jsonable(rows))).properties(
        width=480 if len(lay.panels) == 1 else 320, height=300 if len(lay.panels) == 1 else 220
    )
    full = {"text": title, "subtitle": f"{lay.pooling()}; {BAND}"}
    if len(lay.panels) == 1:
        return chart.properties(title=full)
    return chart.facet(
        facet=alt.Facet("panel:N", sort=lay.panels, title=None),
        columns=min(3, len(lay.panels)),
        title=full,
    )


def _color_order(rows: list[dict[str, Any]]) -> list[str]:
    """Colour legend in numeric order when the values are numbers (32 before 128)."""
    values = sorted({str(r["color"]) for r in rows})
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


# ---- heatmap ------------------------------------------------------------------------------


def heatmap_sql(x: str, y: str, metric: str, lay: Layout) -> str:
    reducer, column = parse_metric(metric)
    return f"""with per_run as (
  select r.run_id, r.status, {lay.panel_sql} as panel, {lay.sql(x)} as x, {lay.sql(y)} as y,
         {reduce_sql(reducer, column)} as value
  from runs r left join epochs e using (run_id)
  where {lay.condition}
  group by all
)
select panel, x, y,
       avg(value) filter (where status = 'done' and isfinite(value)) as value,
       count(*) filter (where status = 'done') as done,
       count(*) filter (where status = 'diverged') as diverged,
       count(*) filter (where status = 'failed') as failed,
       count(*) as runs
from per_run group by panel, x, y order by panel, x, y"""


def heatmap_figure(
    con: Any,
    study: str,
    axes: list[str],
    x: str | None,
    y: str | None,
    metric: str,
    sel: Selection = Selection(),
) -> Figure:
    x, y = _pick_axes(axes, x, y)
    lay = layout(con, study, axes, [x, y], sel, "heatmap")
    sql = heatmap_sql(x, y, metric, lay)
    rows = fetch_rows(con, sql)
    return Figure("heatmap", _heatmap_chart(rows, study, x, y, metric, lay), sql, len(rows), lay)


def _pick_axes(axes: list[str], x: str | None, y: str | None) -> tuple[str, str]:
    if x is None and y is None and len(axes) >= 2:
        return axes[0], axes[1]
    for opt, value in (("--x", x), ("--y", y)):
        if value is None:
            raise OptlabError(f"{opt}: name an axis; this study varies {', '.join(axes)}")
        if value not in axes:
            raise OptlabError(
                f"{opt} {value}: the study does not vary it; "
                f"it varies {', '.join(axes) or 'nothing'}"
            )
    return x, y  # type: ignore[return-value]


# A cell with no finished run: its own colour, a legend entry, and a label that reads on it.
STATES = {
    "all diverged": ("#d62728", "white"),
    "all failed": ("#3b3b3b", "white"),
    "diverged or failed": ("#ff7f0e", "black"),
    "no finished run yet": ("#d9d9d9", "black"),
}


def _state(row: dict[str, Any]) -> str:
    if row["value"] is not None:
        return "finished"
    if (
        row["done"] == 0
        and row["diverged"]
        and not row["failed"]
        and row["diverged"] == row["runs"]
    ):
        return "all diverged"
    if row["done"] == 0 and row["failed"] and not row["diverged"] and row["failed"] == row["runs"]:
        return "all failed"
    if row["diverged"] or row["failed"]:
        return "diverged or failed"
    return "no finished run yet"


def _label(row: dict[str, Any]) -> str:
    """A cell's text: the mean, and under it what did not finish (kept inside the cell)."""
    notes = [f"{row[s]} {s}" for s in ("diverged", "failed") if row[s]]
    if row["value"] is None:
        return "\n".join(notes) if notes else "pending"
    return f"{row['value']:.3f}" + "".join(f"\n{n}" for n in notes)


def _heatmap_chart(
    rows: list[dict[str, Any]], study: str, x: str, y: str, metric: str, lay: Layout
):
    import altair as alt

    finite = [r["value"] for r in rows if r["value"] is not None]
    middle = (min(finite) + max(finite)) / 2 if finite else 0.0
    values = []
    for r in rows:
        state = _state(r)
        if state == "finished":
            # Light text on the dark low end of viridis, dark text on the bright high end.
            ink = "white" if r["value"] < middle else "black"
        else:
            ink = STATES[state][1]
        values.append(
            {
                "panel": r["panel"],
                "x": _fmt(r["x"]),
                "y": _fmt(r["y"]),
                "value": r["value"],
                "state": state,
                "label": _label(r),
                "ink": ink,
                "runs": r["runs"],
                "done": r["done"],
            }
        )
    x_order = [_fmt(v) for v in sorted({r["x"] for r in rows}, key=_sort_key)]
    y_order = [_fmt(v) for v in sorted({r["y"] for r in rows}, key=_sort_key, reverse=True)]
    present = [s for s in STATES if any(v["state"] == s for v in values)]
    base = alt.Chart().encode(
        x=alt.X("x:O", sort=x_order, title=x, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("y:O", sort=y_order, title=y),
    )
    tooltip = ["x:O", "y:O", "value:Q", "done:Q", "runs:Q", "label:N"]
    layers = [
        base.mark_rect(stroke="white")
        .encode(
            color=alt.Color("value:Q", scale=alt.Scale(scheme="viridis"), title=metric),
            tooltip=tooltip,
        )
        .transform_filter("datum.state === 'finished'")
    ]
    if present:
        layers.append(
            base.mark_rect(stroke="white")
            .encode(
                fill=alt.Fill(
                    "state:N",
                    title="no mean",
                    scale=alt.Scale(domain=present, range=[STATES[s][0] for s in present]),
                ),
                tooltip=tooltip,
            )
            .transform_filter("datum.state !== 'finished'")
        )
    # Label colour without a scale of its own, so one colour scale spans every panel.
    layers += [
        base.mark_text(fontSize=11, color=ink, lineBreak="\n")
        .encode(text="label:N")
        .transform_filter(f"datum.ink === '{ink}'")
        for ink in ("white", "black")
    ]
    title = f"{study}: {metric} ({lay.pooling()})"
    size = {"width": max(60 * len(x_order), 240), "height": max(36 * len(y_order), 160)}
    chart = alt.layer(*layers, data=alt.Data(values=values)).properties(**size)
    if len(lay.panels) == 1:
        return chart.properties(title=title)
    return chart.facet(
        facet=alt.Facet("panel:N", sort=lay.panels, title=None),
        columns=min(3, len(lay.panels)),
        title=title,
    ).resolve_scale(x="independent", y="independent")


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


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
  where {lay.condition} and r.status in ('done', 'running', 'interrupted')
    and e.{metric} is not null and isfinite(e.{metric})"""
    body = _ci_sql(inner, "panel, color, epoch").replace(
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
    color, color_sql, shown = _colour(axes, color, [])
    lay = layout(con, study, axes, shown, sel, "curves")
    sql = curves_sql(lay, metric, x, color_sql)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no epochs with {metric} yet")
    chart = _line_band(rows, x, metric, f"{study}: {metric} against {x}", lay, color=color)
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
{_ci_sql("select * from per_run where v is not null and isfinite(v)", "panel, color, x")}"""


def sensitivity_figure(
    con: Any,
    study: str,
    axes: list[str],
    metric: str = "final_test_acc",
    color: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    _axis(axes, LR, "sensitivity")
    color, color_sql, shown = _colour(axes, color, [LR])
    lay = layout(con, study, axes, [LR, *shown], sel, "sensitivity")
    sql = sensitivity_sql(lay, metric, color_sql)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no finished runs yet")
    chart = _line_band(
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
    import altair as alt
    import numpy as np

    for needed in (LR, BATCH):
        if needed not in axes:
            raise OptlabError(
                f"scaling: needs the study to vary {LR} and {BATCH}; study "
                f"{study!r} varies {', '.join(axes) or 'nothing'}"
            )
    color, color_sql, shown = _colour(axes, color, [LR, BATCH])
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


# ---- sfo ----------------------------------------------------------------------------------


def _cell_expr(axes: list[str]) -> str:
    """SQL for a run's block and every axis value: a schedule's own bar, nothing pooled."""
    if not axes:
        return "r.block"
    return "r.block || ': ' || " + " || ', ' || ".join(label_sql(a, axes) for a in axes)


def sfo_sql(lay: Layout, axes: list[str], epsilon: float) -> str:
    return f"""with cells as (
  select {_cell_expr(axes)} as schedule, avg(g.sfo) as mean, stddev_samp(g.sfo) as std,
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
    import altair as alt

    if epsilon is None or not epsilon > 0:
        raise OptlabError(
            "sfo: give --epsilon, the full gradient norm to reach (a positive number)"
        )
    _require_probe(con, study, "full_grad_norm")
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
    inner = f"""select {_cell_expr(axes)} as color, 'all' as panel, p.epoch,
         e.{x} as xv, p.value as v
  from probes p join runs r using (run_id)
  join epochs e on e.run_id = p.run_id and e.epoch = p.epoch
  where {lay.condition} and r.status in ('done', 'running', 'interrupted')
    and p.probe = 'full_grad_norm' and p.key = 'global' and isfinite(p.value)"""
    return "with " + _ci_sql(inner, "panel, color, epoch").replace(
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
    import altair as alt

    if x not in ("sfo", "sfo_full_batches", "step", "epoch"):
        raise OptlabError(f"--x {x!r}: use sfo, sfo_full_batches, step or epoch")
    if epsilon is not None and not epsilon > 0:
        raise OptlabError("--epsilon: the full gradient norm to reach, a positive number")
    _require_probe(con, study, "full_grad_norm")
    lay = layout(
        con, study, axes, ["block", *axes], Selection(sel.where, sel.blocks, ()), "gradnorm"
    )
    sql = gradnorm_sql(lay, axes, x)
    rows = [r for r in fetch_rows(con, sql) if (r["x"] or 0) > 0]
    if not rows:
        raise OptlabError(f"study {study!r} has no full_grad_norm values after training started")
    order = _color_order(rows)
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
            f"""select {_cell_expr(axes)} as color, avg({at}) as x,
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


def probe_names(con: Any, study: str) -> list[str]:
    return [
        n
        for (n,) in con.execute(
            "select distinct p.probe from probes p join memberships m using (run_id) "
            "where m.study = ? order by 1",
            [study],
        ).fetchall()
    ]


def _require_probe(con: Any, study: str, probe: str) -> list[str]:
    names = probe_names(con, study)
    if probe not in names:
        raise OptlabError(
            f"probe {probe!r}: study {study!r} has no values of it; it has "
            f"{', '.join(names) or 'no probe values'}"
        )
    return names


# ---- probes -------------------------------------------------------------------------------


def _noise_scale_sql(lay: Layout, x_expr: str, color_sql: str) -> str:
    """B_simple as McCandlish et al. aggregate it: mean tr(Sigma) over mean |G|^2 over the
    runs (and steps) of a point, not a mean of per-run ratios."""
    return f"""with parts as (
  select {lay.panel_sql} as panel, {color_sql} as color, {x_expr} as x, p.run_id,
         p.step, avg(p.value) filter (where p.key = 'trace_sigma') as trace_sigma,
         avg(p.value) filter (where p.key = 'grad_sq') as grad_sq
  from probes p join runs r using (run_id)
  where {lay.condition} and p.probe = 'grad_noise_scale'
    and p.key in ('trace_sigma', 'grad_sq')
  group by all)
select panel, color, x, avg(trace_sigma) / avg(grad_sq) as mean, null::double as low,
       null::double as high, count(distinct run_id) as n
from parts where isfinite(trace_sigma) and isfinite(grad_sq)
group by all order by panel, color, x"""


def probes_sql(lay: Layout, probe: str, key: str, x: str, color_sql: str) -> str:
    x_expr = "p.epoch" if x == "epoch" else "p.step"
    if (probe, key) == ("grad_noise_scale", "b_simple"):
        return _noise_scale_sql(lay, x_expr, color_sql)
    inner = f"""select {lay.panel_sql} as panel, {color_sql} as color, {x_expr} as x,
         p.value as v
  from probes p join runs r using (run_id)
  where {lay.condition} and p.probe = '{q(probe)}' and p.key = '{q(key)}'
    and isfinite(p.value)"""
    return "with " + _ci_sql(inner, "panel, color, x")


def probes_figure(
    con: Any,
    study: str,
    axes: list[str],
    probe: str | None,
    key: str = "global",
    x: str = "epoch",
    color: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    names = _require_probe(con, study, probe) if probe else probe_names(con, study)
    if not names:
        raise OptlabError(f"study {study!r} has no probe values; add probes to its runs")
    probe = probe or names[0]
    if x not in ("epoch", "step"):
        raise OptlabError(f"--x {x!r}: use epoch or step")
    keys = [
        k
        for (k,) in con.execute(
            "select distinct p.key from probes p join memberships m using (run_id) "
            "where m.study = ? and p.probe = ? order by 1",
            [study, probe],
        ).fetchall()
    ]
    if key not in keys:
        shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
        raise OptlabError(f"--key {key!r}: probe {probe} has no such key; it has {shown}")
    color, color_sql, shown = _colour(axes, color, [])
    lay = layout(con, study, axes, shown, sel, "probes")
    sql = probes_sql(lay, probe, key, x, color_sql)
    rows = fetch_rows(con, sql)
    title = f"{study}: {probe} [{key}] against {x}"
    if (probe, key) == ("grad_noise_scale", "b_simple"):
        title += " (mean tr(Sigma) / mean |G|^2 over seeds: parts averaged before dividing)"
    chart = _line_band(rows, x, probe, title, lay, color=color, y_title=f"{probe} {key}")
    return Figure("probes", chart, sql, len(rows), lay)
