"""The charts beyond the heatmap: curves, sensitivity, scaling, sfo and probes.

Each ``*_figure(con, study, axes, ...)`` runs one SQL query (kept in the figure, and
written next to the image) and draws its rows with Altair. Seed bands span the lowest and
highest value over seeds; lines are the mean. Axes that a chart does not show stay apart:
each of their cells gets its own line.
"""

from __future__ import annotations

import math
from typing import Any

from optlab.errors import OptlabError
from optlab.events import EPOCH_FIELDS
from optlab.plot import Figure, fetch_rows, parse_metric, reduce_sql
from optlab.store import config_column

X_CHOICES = ("epoch", "step", "samples", "seconds")
CURVE_COLUMNS = tuple(f for f in EPOCH_FIELDS if f != "epoch")
LR, BATCH = "optimizer.lr", "batch_schedule.batch_size"


def _q(text: str) -> str:
    return text.replace("'", "''")


def _axis(axes: list[str], value: str | None, option: str, default: str | None = None) -> str:
    value = value or default
    if value is None:
        raise OptlabError(f"{option}: name an axis; this study varies {', '.join(axes)}")
    if value not in axes:
        raise OptlabError(f"{option} {value}: the study does not vary it; it varies "
                          f"{', '.join(axes) or 'nothing'}")
    return value


def _cell_expr(axes: list[str], shown: list[str]) -> str:
    """SQL for a label of the other axes' values of a run (its line within a colour)."""
    others = [a for a in axes if a not in shown]
    if not others:
        return "r.block"
    parts = " || ', ' || ".join(f"'{a}=' || coalesce(r.\"{config_column(a)}\"::varchar, '-')"
                                for a in others)
    return f"r.block || ': ' || {parts}"


def _default_color(axes: list[str], exclude: list[str]) -> str | None:
    for preferred in ("optimizer", "optimizer.name"):
        if preferred in axes and preferred not in exclude:
            return preferred
    rest = [a for a in axes if a not in exclude]
    return rest[0] if rest else None


def _color_sql(color: str | None) -> str:
    """The colour of a run's line: an axis' value, or its block when no axis is left."""
    return f'r."{config_column(color)}"::varchar' if color else "r.block"


def _line_band(rows: list[dict[str, Any]], x: str, y: str, title: str, *, log_x: bool = False,
               color: str | None = None, y_title: str | None = None):
    import altair as alt

    scale = alt.Scale(type="log") if log_x else alt.Scale(zero=False)
    enc_x = alt.X("x:Q", title=x, scale=scale)
    base = alt.Chart(alt.Data(values=_jsonable(rows))).encode(
        x=enc_x, color=alt.Color("color:N", title=color or "block", sort=_color_order(rows)),
        detail="cell:N")
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("low:Q", title=y_title or y,
                                                      scale=alt.Scale(zero=False)),
                                              y2="high:Q")
    line = base.mark_line(point=len(rows) < 200).encode(
        y="mean:Q", tooltip=["color:N", "cell:N", "x:Q", "mean:Q", "low:Q", "high:Q",
                             "seeds:Q"])
    return (band + line).properties(title=title, width=480, height=300)


def _color_order(rows: list[dict[str, Any]]) -> list[str]:
    """Colour legend in numeric order when the values are numbers (32 before 128)."""
    values = sorted({str(r["color"]) for r in rows})
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v if isinstance(v, int | float | str | bool) or v is None else str(v)

    return [{k: clean(v) for k, v in row.items()} for row in rows]


# ---- curves -------------------------------------------------------------------------------

def curves_sql(study: str, axes: list[str], metric: str, x: str, color: str | None) -> str:
    x_expr = {"epoch": "e.epoch", "step": "e.step", "samples": "e.samples",
              "seconds": "e.seconds_so_far"}[x]
    return f"""with e as (
  select *, sum(seconds) over (partition by run_id order by epoch) as seconds_so_far
  from epochs)
select {_color_sql(color)} as color, {_cell_expr(axes, [color] if color else [])} as cell,
       e.epoch, avg({x_expr}) as x, avg(e.{metric}) as mean, min(e.{metric}) as low,
       max(e.{metric}) as high, count(*) as seeds
from runs r join e using (run_id)
where r.study = '{_q(study)}' and r.status in ('done', 'running', 'interrupted')
  and e.{metric} is not null and isfinite(e.{metric})
group by all order by color, cell, e.epoch"""


def curves_figure(con: Any, study: str, axes: list[str], metric: str = "test_acc",
                  x: str = "epoch", color: str | None = None) -> Figure:
    if metric not in CURVE_COLUMNS:
        raise OptlabError(f"--metric {metric!r}: not an epochs column; use one of "
                          f"{', '.join(CURVE_COLUMNS)}")
    if x not in X_CHOICES:
        raise OptlabError(f"--x {x!r}: use one of {', '.join(X_CHOICES)}")
    color = _axis(axes, color, "--color") if color else _default_color(axes, [])
    sql = curves_sql(study, axes, metric, x, color)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no epochs with {metric} yet")
    chart = _line_band(rows, x, metric, f"{study}: {metric} against {x} (mean, band = seed "
                       "range)", color=color)
    return Figure("curves", chart, sql, len(rows))


# ---- sensitivity --------------------------------------------------------------------------

def sensitivity_sql(study: str, axes: list[str], metric: str, color: str | None) -> str:
    reducer, column = parse_metric(metric)
    shown = [LR] + ([color] if color else [])
    return f"""with per_run as (
  select r.run_id, {_color_sql(color)} as color, {_cell_expr(axes, shown)} as cell,
         r."{config_column(LR)}" as lr, {reduce_sql(reducer, column)} as value
  from runs r join epochs e using (run_id)
  where r.study = '{_q(study)}' and r.status = 'done'
  group by all)
select color, cell, lr as x, avg(value) as mean, min(value) as low, max(value) as high,
       count(*) as seeds
from per_run where value is not null and isfinite(value)
group by all order by color, cell, x"""


def sensitivity_figure(con: Any, study: str, axes: list[str], metric: str = "final_test_acc",
                       color: str | None = None) -> Figure:
    _axis(axes, LR, "sensitivity")
    color = _axis(axes, color, "--color") if color else _default_color(axes, [LR])
    sql = sensitivity_sql(study, axes, metric, color)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no finished runs yet")
    chart = _line_band(rows, LR, metric, f"{study}: {metric} against learning rate (mean, band "
                       "= seed range)", log_x=True, color=color)
    return Figure("sensitivity", chart, sql, len(rows))


# ---- scaling ------------------------------------------------------------------------------

def scaling_sql(study: str, axes: list[str], metric: str) -> str:
    reducer, column = parse_metric(metric)
    better = "arg_max" if column.endswith("_acc") else "arg_min"
    return f"""with per_run as (
  select {_cell_expr(axes, [LR, BATCH])} as cell, r."{config_column(BATCH)}" as batch_size,
         r."{config_column(LR)}" as lr, {reduce_sql(reducer, column)} as value
  from runs r join epochs e using (run_id)
  where r.study = '{_q(study)}' and r.status = 'done'
  group by all),
cells as (
  select cell, batch_size, lr, avg(value) as value, count(*) as seeds
  from per_run where value is not null and isfinite(value) group by all)
select cell, batch_size, {better}(lr, value) as optimal_lr, {better.replace("arg_", "")}(value)
       as value, min(seeds) as seeds
from cells group by all order by cell, batch_size"""


def scaling_figure(con: Any, study: str, axes: list[str], metric: str = "best_test_acc"
                   ) -> Figure:
    import altair as alt
    import numpy as np

    for needed in (LR, BATCH):
        if needed not in axes:
            raise OptlabError(f"scaling: needs the study to vary {LR} and {BATCH}; study "
                              f"{study!r} varies {', '.join(axes) or 'nothing'}")
    sql = scaling_sql(study, axes, metric)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no finished runs yet")
    fits, lines = [], []
    for cell in sorted({r["cell"] for r in rows}):
        pts = [r for r in rows if r["cell"] == cell and r["optimal_lr"]]
        if len(pts) >= 2 and len({p["batch_size"] for p in pts}) >= 2:
            lx = np.log([p["batch_size"] for p in pts])
            ly = np.log([p["optimal_lr"] for p in pts])
            slope, icpt = np.polyfit(lx, ly, 1) if np.ptp(ly) > 0 else (0.0, ly[0])
            fits.append(f"{cell}: slope {slope:.2f}")
            ends = (min(p["batch_size"] for p in pts), max(p["batch_size"] for p in pts))
            lines += [{"cell": cell, "batch_size": float(b),
                       "fit": float(np.exp(icpt) * b ** slope)} for b in ends]
    log = alt.Scale(type="log")
    points = alt.Chart(alt.Data(values=_jsonable(rows))).mark_point(filled=True, size=60).encode(
        x=alt.X("batch_size:Q", scale=log, title=BATCH),
        y=alt.Y("optimal_lr:Q", scale=log, title="optimal " + LR),
        color=alt.Color("cell:N", title=""), tooltip=["cell:N", "batch_size:Q", "optimal_lr:Q",
                                                     "value:Q", "seeds:Q"])
    fit = alt.Chart(alt.Data(values=lines)).mark_line(strokeDash=[4, 3]).encode(
        x="batch_size:Q", y="fit:Q", color="cell:N")
    subtitle = "; ".join(fits) or "too few batch sizes to fit"
    chart = (points + fit).properties(
        title={"text": f"{study}: optimal LR against batch size ({metric}; slope 1 = linear "
                       "rule)", "subtitle": subtitle}, width=420, height=300)
    return Figure("scaling", chart, sql, len(rows))


# ---- sfo ----------------------------------------------------------------------------------

def sfo_sql(study: str, axes: list[str], epsilon: float) -> str:
    return f"""select {_cell_expr(axes, [])} as schedule,
       avg(g.sfo) as mean, stddev_samp(g.sfo) as std, min(g.sfo) as low, max(g.sfo) as high,
       count(g.sfo) as reached, count(*) as runs
from reach_grad_norm({epsilon!r}) g join runs r using (study, run_id)
where g.study = '{_q(study)}' and g.status = 'done'
group by all order by mean nulls last"""


def sfo_figure(con: Any, study: str, axes: list[str], epsilon: float | None) -> Figure:
    import altair as alt

    if epsilon is None or not epsilon > 0:
        raise OptlabError("sfo: give --epsilon, the full gradient norm to reach (a positive "
                          "number)")
    _require_probe(con, study, "full_grad_norm")
    sql = sfo_sql(study, axes, epsilon)
    rows = fetch_rows(con, sql)
    for r in rows:
        r["label"] = f"{r['reached']}/{r['runs']} reached"
    base = alt.Chart(alt.Data(values=_jsonable(rows))).encode(
        y=alt.Y("schedule:N", sort=None, title="schedule"))
    bars = base.mark_bar().encode(x=alt.X("mean:Q", title=f"SFO to reach |grad| <= {epsilon:g}"),
                                  tooltip=["schedule:N", "mean:Q", "std:Q", "reached:Q",
                                           "runs:Q"])
    whiskers = base.mark_rule().encode(x="low:Q", x2="high:Q")
    text = base.mark_text(align="left", dx=4).encode(x="high:Q", text="label:N")
    chart = (bars + whiskers + text).properties(
        title=f"{study}: samples (SFO) to reach full gradient norm <= {epsilon:g} (mean; "
              "whiskers = seed range)", width=420, height=max(30 * len(rows), 120))
    return Figure("sfo", chart, sql, len(rows))


def probe_names(con: Any, study: str) -> list[str]:
    return [n for (n,) in con.execute(
        "select distinct p.probe from probes p join memberships m using (run_id) "
        "where m.study = ? order by 1", [study]).fetchall()]


def _require_probe(con: Any, study: str, probe: str) -> list[str]:
    names = probe_names(con, study)
    if probe not in names:
        raise OptlabError(f"probe {probe!r}: study {study!r} has no values of it; it has "
                          f"{', '.join(names) or 'no probe values'}")
    return names


# ---- probes -------------------------------------------------------------------------------

def probes_sql(study: str, axes: list[str], probe: str, key: str, x: str,
               color: str | None) -> str:
    x_expr = "p.epoch" if x == "epoch" else "p.step"
    return f"""select {_color_sql(color)} as color, {_cell_expr(axes, [color] if color else [])}
       as cell, {x_expr} as x, avg(p.value) as mean, min(p.value) as low, max(p.value) as high,
       count(*) as seeds
from probes p join runs r using (run_id)
where r.study = '{_q(study)}' and p.probe = '{_q(probe)}' and p.key = '{_q(key)}'
  and isfinite(p.value)
group by all order by color, cell, x"""


def probes_figure(con: Any, study: str, axes: list[str], probe: str | None,
                  key: str = "global", x: str = "epoch", color: str | None = None) -> Figure:
    names = _require_probe(con, study, probe) if probe else probe_names(con, study)
    if not names:
        raise OptlabError(f"study {study!r} has no probe values; add probes to its runs")
    probe = probe or names[0]
    if x not in ("epoch", "step"):
        raise OptlabError(f"--x {x!r}: use epoch or step")
    keys = [k for (k,) in con.execute(
        "select distinct p.key from probes p join memberships m using (run_id) "
        "where m.study = ? and p.probe = ? order by 1", [study, probe]).fetchall()]
    if key not in keys:
        shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
        raise OptlabError(f"--key {key!r}: probe {probe} has no such key; it has {shown}")
    color = _axis(axes, color, "--color") if color else _default_color(axes, [])
    sql = probes_sql(study, axes, probe, key, x, color)
    rows = fetch_rows(con, sql)
    chart = _line_band(rows, x, probe, f"{study}: {probe} [{key}] against {x} (mean, band = "
                       "seed range)", color=color, y_title=f"{probe} {key}")
    return Figure("probes", chart, sql, len(rows))
