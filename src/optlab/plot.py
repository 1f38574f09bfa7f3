"""Charts from the store (Altair): `.html` (self-contained, opens offline), `.png`, `.svg`.

Each chart writes the SQL that produced its data next to the image (``<out>.sql``), so
that `optlab query` reproduces it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optlab import views
from optlab.errors import OptlabError
from optlab.events import EPOCH_FIELDS
from optlab.store import config_column, reading

REDUCERS = ("best", "final", "min", "max", "mean")
METRIC_COLUMNS = tuple(f for f in EPOCH_FIELDS if f != "epoch")
OUT_SUFFIXES = (".html", ".png", ".svg")


def parse_metric(metric: str) -> tuple[str, str]:
    """``best_test_acc`` -> ("best", "test_acc"). Best is max for accuracies, min otherwise."""
    reducer, _, column = metric.partition("_")
    if reducer not in REDUCERS or column not in METRIC_COLUMNS:
        examples = ", ".join(f"best_{c}" for c in ("test_acc", "test_loss", "train_loss"))
        raise OptlabError(
            f"--metric {metric!r}: not a metric; use REDUCER_COLUMN with REDUCER one of "
            f"{', '.join(REDUCERS)} and COLUMN one of {', '.join(METRIC_COLUMNS)} "
            f"(e.g. {examples})")
    return reducer, column


def reduce_sql(reducer: str, column: str) -> str:
    if reducer == "best":
        reducer = "max" if column.endswith("_acc") else "min"
    if reducer == "final":
        return f"arg_max(e.{column}, e.epoch)"
    return {"min": "min", "max": "max", "mean": "avg"}[reducer] + f"(e.{column})"


def study_axes(con: Any, study: str | None) -> tuple[str, list[str]]:
    """The study to plot (the only one, when not named) and the axes it varies."""
    rows = dict(con.execute("select study, axes from studies").fetchall())
    if study is None:
        if len(rows) != 1:
            raise OptlabError(f"--study: name one of {', '.join(sorted(rows)) or '(none yet)'}")
        study = next(iter(rows))
    if study not in rows:
        raise OptlabError(f"--study {study!r}: no such study; studies: {', '.join(sorted(rows))}")
    axes: list[str] = []
    for block_axes in json.loads(rows[study] or "{}").values():
        axes += [a for a in block_axes if a not in axes]
    return study, axes


def heatmap_sql(study: str, x: str, y: str, metric: str) -> str:
    reducer, column = parse_metric(metric)
    xc, yc = config_column(x), config_column(y)
    quoted = study.replace("'", "''")
    return f"""with per_run as (
  select r.run_id, r.status, r."{xc}" as x, r."{yc}" as y,
         {reduce_sql(reducer, column)} as value
  from runs r left join epochs e using (run_id)
  where r.study = '{quoted}'
  group by all
)
select x, y,
       avg(value) filter (where status = 'done') as value,
       count(*) filter (where status = 'done') as done,
       count(*) filter (where status = 'diverged') as diverged,
       count(*) filter (where status = 'failed') as failed,
       count(*) as runs
from per_run group by x, y order by x, y"""


@dataclass
class Figure:
    """A chart, the SQL that produced its data, and how many rows that was."""

    kind: str
    chart: Any
    sql: str
    rows: int


def fetch_rows(con: Any, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def heatmap_figure(con: Any, study: str, axes: list[str], x: str | None, y: str | None,
                   metric: str) -> Figure:
    x, y = _pick_axes(axes, x, y)
    sql = heatmap_sql(study, x, y, metric)
    rows = fetch_rows(con, sql)
    if not rows:
        raise OptlabError(f"study {study!r} has no runs")
    return Figure("heatmap", _heatmap_chart(rows, study, x, y, metric), sql, len(rows))


def heatmap(store: Path, out: Path | None, study: str | None, x: str | None, y: str | None,
            metric: str) -> tuple[Path, int]:
    """Write the heatmap (default file: STUDY_heatmap.html); returns (path, cells)."""
    return draw(store, out, study, "heatmap",
                lambda con, st, axes: heatmap_figure(con, st, axes, x, y, metric))


def draw(store: Path, out: Path | None, study: str | None, kind: str,
         make: Any) -> tuple[Path, int]:
    """Open the store, make a figure with ``make(con, study, axes)``, save it and its SQL."""
    check_out(out)
    with reading(store) as con:
        views.ensure_readable(con)
        study, axes = study_axes(con, study)
        figure = make(con, study, axes)
    path = out or Path(f"{study}_{kind}.html")
    save(figure, path)
    return path, figure.rows


def check_out(out: Path | None) -> None:
    if out is not None and out.suffix not in OUT_SUFFIXES:
        raise OptlabError(f"--out {out}: use a file ending in {', '.join(OUT_SUFFIXES)}")


def save(figure: Figure, out: Path) -> None:
    _save(figure.chart, out)
    out.with_name(out.name + ".sql").write_text(figure.sql + ";\n")


def _pick_axes(axes: list[str], x: str | None, y: str | None) -> tuple[str, str]:
    if x is None and y is None and len(axes) == 2:
        return axes[0], axes[1]
    for opt, value in (("--x", x), ("--y", y)):
        if value is None:
            raise OptlabError(f"{opt}: name an axis; this study varies {', '.join(axes)}")
        if value not in axes:
            raise OptlabError(f"{opt} {value}: the study does not vary it; "
                              f"it varies {', '.join(axes) or 'nothing'}")
    return x, y  # type: ignore[return-value]


def _label(row: dict[str, Any]) -> str:
    notes = [f"{row[s]} {s}" for s in ("diverged", "failed") if row[s]]
    if row["value"] is None or (isinstance(row["value"], float) and math.isnan(row["value"])):
        return ", ".join(notes) if notes else "pending"
    return f"{row['value']:.3f}" + (f" ({', '.join(notes)})" if notes else "")


def _heatmap_chart(rows: list[dict[str, Any]], study: str, x: str, y: str, metric: str):
    import altair as alt

    values = [{"x": _fmt(r["x"]), "y": _fmt(r["y"]), "xs": r["x"], "ys": r["y"],
               "value": r["value"], "label": _label(r), "runs": r["runs"],
               "done": r["done"]} for r in rows]
    x_order = [_fmt(v) for v in sorted({r["x"] for r in rows}, key=_sort_key)]
    y_order = [_fmt(v) for v in sorted({r["y"] for r in rows}, key=_sort_key, reverse=True)]
    base = alt.Chart(alt.Data(values=values)).encode(
        x=alt.X("x:O", sort=x_order, title=x, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("y:O", sort=y_order, title=y))
    cells = base.mark_rect(stroke="white").encode(
        color=alt.condition("datum.value === null", alt.value("#bbbbbb"),
                            alt.Color("value:Q", scale=alt.Scale(scheme="viridis"),
                                      title=metric)),
        tooltip=["x:O", "y:O", "value:Q", "done:Q", "runs:Q", "label:N"])
    finite = [r["value"] for r in rows if r["value"] is not None]
    middle = (min(finite) + max(finite)) / 2 if finite else 0.0
    # Light text on the dark low end of viridis, dark text on the bright high end.
    text = base.mark_text(fontSize=11).encode(
        text="label:N",
        color=alt.condition(f"datum.value === null || datum.value < {middle!r}",
                            alt.value("white"), alt.value("black")))
    return (cells + text).properties(
        title=f"{study}: {metric} (mean over seeds; grey = no finished run)",
        width=max(60 * len(x_order), 240), height=max(36 * len(y_order), 160))


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def _save(chart: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.suffix == ".html":
            chart.save(str(out), inline=True)  # Vega's scripts embedded: opens offline
        else:
            chart.save(str(out), scale_factor=2 if out.suffix == ".png" else 1)
    except OSError as e:
        raise OptlabError(f"--out {out}: cannot write: {e.strerror or e}") from None
