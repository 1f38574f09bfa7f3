"""The heatmap: the metric over two axes, a cell per pair of values, each labelled with its
mean and its diverged, failed or stopped runs (successive halving stopped them at a rung:
the mean is of the runs that trained to their end).
"""

from __future__ import annotations

from typing import Any

from optlab.analysis.results import fetch_rows, parse_metric, reduce_sql
from optlab.charts.drawing import axis, fmt, sort_key
from optlab.charts.figures import Chart, Figure, Layout, Option, ReportFacts, Selection, layout
from optlab.errors import OptlabError
from optlab.states import State
from optlab.study.schema import parse_value

# ---- heatmap ------------------------------------------------------------------------------


def heatmap_sql(x: str, y: str, metric: str, lay: Layout) -> str:
    reducer, column = parse_metric(metric)
    return f"""with per_run as (
  select r.run_id, r.status, {lay.panel_sql} as panel, {lay.sql(x)} as x, {lay.sql(y)} as y,
         {reduce_sql(reducer, column)} as value, max(e.epoch) as last
  from runs r left join epochs e using (run_id)
  where {lay.condition}
  group by all
)
select panel, x, y,
       avg(value) filter (where status = 'done' and isfinite(value)) as value,
       count(*) filter (where status = 'done') as done,
       count(*) filter (where status = 'diverged') as diverged,
       count(*) filter (where status = 'failed') as failed,
       count(*) filter (where status = 'stopped') as stopped,
       max(last) filter (where status = 'stopped') as stopped_at,
       count(*) as runs
from per_run group by panel, x, y order by panel, x, y"""


def heatmap_figure(
    con: Any,
    study: str,
    axes: list[str],
    x: str | None,
    y: str | None,
    metric: str,
    relative_to: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    x, y = _pick_axes(axes, x, y)
    lay = layout(con, study, axes, [x, y], sel, "heatmap")
    sql = heatmap_sql(x, y, metric, lay)
    rows = fetch_rows(con, sql)
    relative = None
    if relative_to is not None:
        relative = _subtract_baseline(rows, relative_to, x, y)
    chart = _heatmap_chart(rows, study, x, y, metric, lay, relative)
    return Figure("heatmap", chart, sql, len(rows), lay)


def _subtract_baseline(rows: list[dict[str, Any]], relative_to: str, x: str, y: str) -> str:
    """``--relative-to AXIS=VALUE`` (the x or y axis): each cell's mean minus the mean of
    the cell in its panel at AXIS=VALUE and the same other coordinate (seed 002: the
    warmup effect within each data regime). Returns the title's phrase."""
    axis, sep, raw = relative_to.partition("=")
    if not sep or axis not in (x, y):
        raise OptlabError(
            f"--relative-to {relative_to!r}: give AXIS=VALUE with AXIS the heatmap's x ({x}) "
            f"or y ({y}), such as {y}=0"
        )
    key, other = ("x", "y") if axis == x else ("y", "x")
    wanted = fmt(parse_value(raw))
    base = {(r["panel"], fmt(r[other])): r["value"] for r in rows if fmt(r[key]) == wanted}
    if not base:
        present = [fmt(v) for v in sorted({r[key] for r in rows}, key=sort_key)]
        raise OptlabError(
            f"--relative-to {relative_to!r}: no cell has {axis} = {raw}; its values: "
            f"{', '.join(present)}"
        )
    for r in rows:
        baseline = base.get((r["panel"], fmt(r[other])))
        r["baseline"] = baseline
        if r["value"] is not None and baseline is None:
            r["no_baseline"] = True
        r["value"] = None if r["value"] is None or baseline is None else r["value"] - baseline
    where = "column" if key == "y" else "row"
    return f"minus the same {where}'s {axis} = {raw} cell"


def _pick_axes(axes: list[str], x: str | None, y: str | None) -> tuple[str, str]:
    if x is None and y is None and len(axes) >= 2:
        return axes[0], axes[1]
    return axis(axes, x, "--x"), axis(axes, y, "--y")


# A cell with no finished run: its own colour, a legend entry, and a label that reads on it.
STATES = {
    "all diverged": ("#d62728", "white"),
    "all failed": ("#3b3b3b", "white"),
    "diverged or failed": ("#ff7f0e", "black"),
    "stopped early": ("#9ecae1", "black"),
    "no finished run yet": ("#d9d9d9", "black"),
    "no baseline": ("#f0f0f0", "black"),  # --relative-to: its baseline cell has no mean
}


def _state(row: dict[str, Any]) -> str:
    if row["value"] is not None:
        return "finished"
    if row.get("no_baseline"):
        return "no baseline"
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
    if row.get("stopped"):
        return "stopped early"
    return "no finished run yet"


def _label(row: dict[str, Any], signed: bool = False) -> str:
    """A cell's text: the mean (a difference, signed), and under it what did not finish
    (kept inside the cell)."""
    notes = [f"{row[s]} {s}" for s in (State.DIVERGED, State.FAILED) if row[s]]
    if row.get("stopped"):
        notes.append(f"{row['stopped']} stopped at epoch {row['stopped_at']}")
    if row["value"] is None:
        if row.get("no_baseline"):
            notes.insert(0, "no baseline")
        return "\n".join(notes) if notes else State.PENDING
    return f"{row['value']:{'+' if signed else ''}.3f}" + "".join(f"\n{n}" for n in notes)


def _heatmap_chart(
    rows: list[dict[str, Any]],
    study: str,
    x: str,
    y: str,
    metric: str,
    lay: Layout,
    relative: str | None = None,
):
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    finite = [r["value"] for r in rows if r["value"] is not None]
    middle = (min(finite) + max(finite)) / 2 if finite else 0.0
    reach = max((abs(v) for v in finite), default=0.0) or 1.0
    values = []
    for r in rows:
        state = _state(r)
        if state == "finished" and relative:
            # Light text on the strong ends of the diverging scale, dark near 0.
            ink = "white" if abs(r["value"]) > 0.6 * reach else "black"
        elif state == "finished":
            # Light text on the dark low end of viridis, dark text on the bright high end.
            ink = "white" if r["value"] < middle else "black"
        else:
            ink = STATES[state][1]
        values.append(
            {
                "panel": r["panel"],
                "x": fmt(r["x"]),
                "y": fmt(r["y"]),
                "value": r["value"],
                "state": state,
                "label": _label(r, signed=relative is not None),
                "ink": ink,
                "runs": r["runs"],
                "done": r["done"],
            }
        )
    x_order = [fmt(v) for v in sorted({r["x"] for r in rows}, key=sort_key)]
    y_order = [fmt(v) for v in sorted({r["y"] for r in rows}, key=sort_key, reverse=True)]
    present = [s for s in STATES if any(v["state"] == s for v in values)]
    base = alt.Chart().encode(
        x=alt.X("x:O", sort=x_order, title=x, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("y:O", sort=y_order, title=y),
    )
    tooltip = ["x:O", "y:O", "value:Q", "done:Q", "runs:Q", "label:N"]
    layers = [
        base.mark_rect(stroke="white")
        .encode(
            color=alt.Color(
                "value:Q",
                scale=(
                    alt.Scale(scheme="redblue", domain=[-reach, reach], domainMid=0)
                    if relative
                    else alt.Scale(scheme="viridis")
                ),
                title=f"{metric} difference" if relative else metric,
            ),
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
    title = f"{study}: {metric}{' ' + relative if relative else ''} ({lay.pooling()})"
    size = {"width": max(60 * len(x_order), 240), "height": max(36 * len(y_order), 160)}
    chart = alt.layer(*layers, data=alt.Data(values=values)).properties(**size)
    if len(lay.panels) == 1:
        return chart.properties(title=title)
    return chart.facet(
        facet=alt.Facet("panel:N", sort=lay.panels, title=None),
        columns=min(3, len(lay.panels)),
        title=title,
    ).resolve_scale(x="independent", y="independent")


def _in_report(facts: ReportFacts) -> list[tuple[str, dict[str, Any]]]:
    """The first two axes a grid varies; a search's points are drawn by scatter and
    parallel (a heatmap of them is a sparse grid)."""
    searched = getattr(facts.axes, "searched", set())
    axes = [a for a in facts.axes if a not in searched]
    return [("heatmap", {"x": axes[0], "y": axes[1]})] if len(axes) >= 2 else []


CHARTS = (
    Chart(
        "heatmap",
        heatmap_figure,
        "A metric over two axes, mean over seeds, a panel per block and other axis; cells with "
        "no finished run coloured by why (diverged, failed, not yet run).",
        (
            Option(
                "x",
                None,
                "Dotted config path on the x axis, e.g. optimizer.lr (default: the study's "
                "first axis).",
            ),
            Option(
                "y", None, "Dotted config path on the y axis (default: the study's second axis)."
            ),
            Option(
                "metric",
                "best_test_acc",
                "REDUCER_COLUMN: best, final, min, max or mean of an epochs column, per run; "
                "mean over seeds.",
                metric=True,
            ),
            Option(
                "relative_to",
                None,
                "AXIS=VALUE of the x or y axis: each cell minus the cell at that value in its "
                "column (or row), on a diverging scale, e.g. lr_schedule.warmup_epochs=0.",
            ),
        ),
        report=_in_report,
    ),
)
