"""Probe charts: any probe's values against epochs, steps or samples (the gradient noise scale
aggregated as McCandlish et al. do).
"""

from __future__ import annotations

from typing import Any

from optlab.analysis.results import fetch_rows
from optlab.charts.drawing import ci_sql, colour, line_band
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
from optlab.store.sql import q


def probe_names(con: Any, study: str) -> list[str]:
    return [
        n
        for (n,) in con.execute(
            "select distinct p.probe from probes p join memberships m using (run_id) "
            "where m.study = ? order by 1",
            [study],
        ).fetchall()
    ]


def require_probe(con: Any, study: str, probe: str) -> list[str]:
    names = probe_names(con, study)
    if probe not in names:
        raise OptlabError(
            f"probe {probe!r}: study {study!r} has no values of it; it has "
            f"{', '.join(names) or 'no probe values'}"
        )
    return names


def _keys(con: Any, study: str, probe: str) -> list[str]:
    return [
        k
        for (k,) in con.execute(
            "select distinct p.key from probes p join memberships m using (run_id) "
            "where m.study = ? and p.probe = ? order by 1",
            [study, probe],
        ).fetchall()
    ]


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
    return "with " + ci_sql(inner, "panel, color, x")


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
    names = require_probe(con, study, probe) if probe else probe_names(con, study)
    if not names:
        raise OptlabError(f"study {study!r} has no probe values; add probes to its runs")
    probe = probe or names[0]
    if x not in ("epoch", "step"):
        raise OptlabError(f"--x {x!r}: use epoch or step")
    keys = _keys(con, study, probe)
    if key not in keys:
        shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
        raise OptlabError(f"--key {key!r}: probe {probe} has no such key; it has {shown}")
    color, color_sql, shown = colour(axes, color, [])
    lay = layout(con, study, axes, shown, sel, "probes")
    sql = probes_sql(lay, probe, key, x, color_sql)
    rows = fetch_rows(con, sql)
    title = f"{study}: {probe} [{key}] against {x}"
    if (probe, key) == ("grad_noise_scale", "b_simple"):
        title += " (mean tr(Sigma) / mean |G|^2 over seeds: parts averaged before dividing)"
    chart = line_band(rows, x, probe, title, lay, color=color, y_title=f"{probe} {key}")
    return Figure("probes", chart, sql, len(rows), lay)


def _in_report(facts: ReportFacts) -> list[tuple[str, dict[str, Any]]]:
    """One chart per probe with values: its global key, or else its first."""
    shown = []
    for name in facts.probes:
        keys = _keys(facts.con, facts.study, name)
        shown.append(
            (f"probe {name}", {"probe": name, "key": "global" if "global" in keys else keys[0]})
        )
    return shown


CHARTS = (
    Chart(
        "probes",
        probes_figure,
        "A probe's value against epoch or step; mean over seeds with a 95% CI.",
        (
            Option("probe", None, "Probe name (default: the first)."),
            Option("key", "global", "Key: global, or a layer name."),
            Option("x", "epoch", "epoch or step."),
            COLOR,
        ),
        report=_in_report,
    ),
)
