"""What the charts share: picking an axis, colouring lines by an axis, a block or a cell, and
drawing a mean over seeds with its 95% t-interval band.
"""

from __future__ import annotations

from typing import Any

from optlab.analysis.results import axis_sql, jsonable
from optlab.charts.figures import Layout, label_sql
from optlab.errors import OptlabError
from optlab.events import EPOCH_FIELDS

X_CHOICES = ("epoch", "step", "samples", "seconds", "comm_rounds")


CURVE_COLUMNS = tuple(f for f in EPOCH_FIELDS if f != "epoch")


LR = "optimizer.lr"


BATCH = "batch_schedule.batch_size"


def axis(axes: list[str], value: str | None, option: str, default: str | None = None) -> str:
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


def colour(
    axes: list[str], color: str | None, exclude: list[str]
) -> tuple[str | None, str, list[str]]:
    """(legend title, SQL of a run's colour, what the colour shows). ``block`` colours by
    block; ``cell`` by block and every axis (one line per cell: nothing left to pool, for
    blocks that vary different axes); else an axis, by default the optimizer."""
    if color == "block":
        return "block", "r.block", ["block"]
    if color == "cell":
        return "cell", cell_expr(axes), ["block", *axes]
    color = axis(axes, color, "--color") if color else _default_color(axes, exclude)
    return color, _color_sql(color, axes), [color] if color else []


FEW_SEEDS = 3  # up to this many seeds, a band is the seeds' range, not a t-interval


def metric_bounds(column: str) -> tuple[float | None, float | None]:
    """The range a metric's values can take: an accuracy [0, 1], a loss [0, inf)."""
    if column.endswith("_acc"):
        return 0.0, 1.0
    if column.endswith("_loss"):
        return 0.0, None
    return None, None


def ci_sql(inner: str, keys: str, bounds: tuple[float | None, float | None] = (None, None)) -> str:
    """Mean and n of ``v`` over the rows of each group, and its band: a 95% t-interval of
    the mean from 4 seeds on; the seeds' range (lowest to highest) with 2 or 3, where a
    t-interval would reach far past the data (12.7 standard deviations each side with 2);
    none with 1. Never outside ``bounds`` (the metric's range)."""
    t_half = "q.t975 * a.sd / sqrt(a.n)"
    low = f"case when a.n > {FEW_SEEDS} then a.mean - {t_half} when a.n > 1 then a.lowest end"
    high = f"case when a.n > {FEW_SEEDS} then a.mean + {t_half} when a.n > 1 then a.highest end"
    lo, hi = bounds
    if lo is not None:
        low = f"case when ({low}) is not null then greatest({low}, {lo}) end"
    if hi is not None:
        high = f"case when ({high}) is not null then least({high}, {hi}) end"
    return f"""agg as (
  select {keys}, avg(v) as mean, stddev_samp(v) as sd, count(*) as n, min(v) as lowest,
         max(v) as highest
  from ({inner}) group by all)
select a.*, {low} as low, {high} as high,
       case when a.n > {FEW_SEEDS} then '95% t-interval' when a.n > 1 then 'seeds range' end
         as band
from agg a left join t_quantiles q on q.df = a.n - 1
order by {keys}"""


BAND = (
    "band = 95% t-interval of the mean over n seeds where n >= 4, the seeds' range (lowest "
    "to highest) where n is 2 or 3, none where n = 1; never outside the metric's range"
)


def line_band(
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
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    scale = alt.Scale(type="log") if log_x else alt.Scale(zero=False)
    base = alt.Chart().encode(
        x=alt.X("x:Q", title=x, scale=scale),
        color=alt.Color(
            "color:N",
            title=color or "",
            sort=color_order(rows),
            legend=alt.Legend(labelLimit=0),  # no cut: labels tell cells and tables apart
        ),
    )
    y_axis = alt.Y("mean:Q", title=y_title or y, scale=alt.Scale(zero=False))
    line = base.mark_line(point=len(rows) < 200).encode(
        y=y_axis,
        tooltip=["panel:N", "color:N", "x:Q", "mean:Q", "low:Q", "high:Q", "n:Q", "band:N"],
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


def color_order(rows: list[dict[str, Any]]) -> list[str]:
    """Colour legend in numeric order when the values are numbers (32 before 128)."""
    values = sorted({str(r["color"]) for r in rows})
    try:
        return sorted(values, key=float)
    except ValueError:
        return values


def fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def cell_expr(axes: list[str]) -> str:
    """SQL for a run's block and every axis value: a schedule's own bar, nothing pooled."""
    if not axes:
        return "r.block"
    return "r.block || ': ' || " + " || ', ' || ".join(label_sql(a, axes) for a in axes)
