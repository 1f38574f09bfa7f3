"""Rendering analysis results (terminal tables) and `optlab report` (one HTML file)."""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from optlab.analysis.analyze import analyses_for, run_analysis, study_facts
from optlab.analysis.results import open_study, probes_asked
from optlab.analysis.status import study_status
from optlab.charts import probe_charts
from optlab.charts.catalog import CHARTS
from optlab.charts.figures import ReportFacts
from optlab.errors import OptlabError


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def render_result(result: Any, console: Any) -> None:

    console.print(
        f"{result.analysis} - study {result.study}, metric {result.metric}",
        style="bold",
        markup=False,
    )
    for key, value in result.findings.items():
        console.print(f"{key}: {_cell(value)}", markup=False)
    for name, rows in result.tables.items():
        if not rows:
            console.print(f"{name}: no rows", markup=False)
            continue
        table = Table(title=name, title_justify="left")
        columns = list(dict.fromkeys(k for row in rows for k in row))
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        console.print(table)
    for item in result.left_out:
        ids = ", ".join(item["run_ids"][:5]) + (", ..." if len(item["run_ids"]) > 5 else "")
        console.print(f"left out: {item['runs']} run(s), {item['reason']} ({ids})", markup=False)


# ---- optlab report ------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>optlab report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f4f4f4; }} .muted {{ color: #777; }} .warn {{ color: #a33; }}
.chart {{ margin: 1em 0 2em; }}
pre {{ background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }}
</style>
<script>
window.optlabErrors = [];
window.addEventListener("error", (e) => window.optlabErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.optlabErrors.push(String(e.reason)));
</script>
<script>{bundle}</script>
</head>
<body>
{body}
<pre id="optlab-errors" hidden></pre>
<script>
const specs = {specs};
Promise.allSettled(Object.entries(specs).map(([id, spec]) =>
  vegaEmbed("#" + id, spec, {{renderer: "svg", actions: false}})
    .then(() => {{ document.getElementById(id).dataset.rendered = "yes"; }})
    .catch((err) => {{ window.optlabErrors.push(id + ": " + err); console.error(err); }})))
  .then(() => {{
    const box = document.getElementById("optlab-errors");
    box.textContent = window.optlabErrors.join("\\n");
    document.body.dataset.done = "yes";
  }});
</script>
</body>
</html>
"""


def _esc(value: Any) -> str:

    return html.escape(_cell(value))


def _html_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='muted'>no rows</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def result_html(result: Any) -> str:
    parts = [f"<p>{_esc(k)}: {_esc(v)}</p>" for k, v in result.findings.items()]
    for name, rows in result.tables.items():
        parts.append(f"<h4>{_esc(name)}</h4>{_html_table(rows)}")
    for item in result.left_out:
        parts.append(
            f"<p class='muted'>left out: {item['runs']} run(s), {_esc(item['reason'])}"
            f" ({_esc(', '.join(item['run_ids'][:10]))}"
            f"{', ...' if len(item['run_ids']) > 10 else ''})</p>"
        )
    return "\n".join(parts)


def _figures(
    facts: ReportFacts, asked: dict[str, tuple[int, int]]
) -> tuple[list[tuple[str, Any]], list[str]]:
    """The charts of the table that fit the study, and a line for each that could not be
    drawn (a probe the runs ask for with no values yet among them)."""
    figures, problems = [], []
    for name, (asking, finished) in asked.items():
        if name not in facts.probes:
            problems.append(
                f"probe {name}: no values yet ({finished} of the {asking} runs that probe "
                "it finished)"
            )
    for chart in CHARTS.values():
        for title, options in chart.report(facts):
            title = title or chart.name
            try:
                figures.append((title, chart.draw_for_page(facts, options)))
            except OptlabError as e:
                problems.append(f"{title}: {e}")
    return figures, problems


def default_epsilon(con: Any, study: str) -> float | None:
    """The median over runs of their lowest full gradient norm: about half the runs reach it."""
    (value,) = con.execute(
        "select median(m) from (select min(p.value) as m from probes p join memberships s "
        "using (run_id) where s.study = ? and p.probe = 'full_grad_norm' and p.key = 'global' "
        "group by p.run_id)",
        [study],
    ).fetchone()
    return None if value is None else float(f"{value:.3g}")


def build_report(
    store: Path, study: str | None, out: Path | None, epsilon: float | None = None
) -> tuple[Path, int, int]:
    """Write the report; returns (path, charts, analyses)."""

    if out is not None and out.suffix != ".html":
        raise OptlabError(f"--out {out}: a report is an .html file")
    with open_study(store, study) as (con, study, axes):
        info = con.execute(
            "select file, description, axes from studies where study = ?", [study]
        ).fetchone()
        blocks = con.execute(
            "select block, count(*), count(distinct seed), list(distinct seed order by seed) "
            "from runs where study = ? group by block order by min(position)",
            [study],
        ).fetchall()
        probe_names = probe_charts.probe_names(con, study)
        asked = probes_asked(con, study)
        names = analyses_for(study_facts(con, study, axes))
        eps_note = ""
        if "full_grad_norm" in probe_names and epsilon is None:
            epsilon = default_epsilon(con, study)
            eps_note = (
                f" (epsilon = {epsilon:g}: the median of the runs' lowest full gradient "
                "norm; choose another with --epsilon)"
            )
        facts = ReportFacts(con, study, axes, probe_names, epsilon)
        figures, problems = _figures(facts, asked)
    (status,) = study_status(store, study)
    out = out or Path(f"{study}_report.html")
    body = [
        f"<h1>{html.escape(study)}</h1>",
        f"<p class='muted'>{html.escape(info[0] or '')} - generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC from {html.escape(str(store))}</p>",
        f"<p>{html.escape(info[1] or '')}</p>",
        "<h2>Matrix</h2>",
        _html_table(_matrix_rows(blocks, info[2])),
        *_status_section(status),
    ]
    chart_html, specs = _charts_section(figures, problems)
    body += chart_html + _analyses_section(store, study, names, epsilon, eps_note)
    _write_page(out, study, body, specs)
    return out, len(figures), len(names)


def _matrix_rows(blocks: list[tuple], axes_json: str | None) -> list[dict[str, Any]]:

    block_axes = json.loads(axes_json or "{}")
    return [
        {
            "block": b,
            "runs": n,
            "seeds": s,
            "seed values": ", ".join(map(str, sv)),
            "axes": "; ".join(
                f"{a} = {', '.join(_cell(v) for v in vals)}"
                for a, vals in block_axes.get(b, {}).items()
            ),
        }
        for b, n, s, sv in blocks
    ]


def _status_section(status: Any) -> list[str]:

    body = ["<h2>Status</h2>", _html_table([{k: v for k, v in status.counts.items()}])]
    if status.problems:
        rows = [
            {
                "run": p["run_id"],
                "status": p["status"],
                "seed": p["seed"],
                "axes": json.dumps(p["axes"]),
                "error": p["error"],
            }
            for p in status.problems
        ]
        body.append(_html_table(rows))
    return body


def _charts_section(
    figures: list[tuple[str, Any]], problems: list[str]
) -> tuple[list[str], dict[str, Any]]:
    """The charts' headings, notes and places (each drawn from its spec on the page)."""

    body, specs = ["<h2>Charts</h2>"], {}
    for i, (title, fig) in enumerate(figures):
        cid = f"chart{i}"
        specs[cid] = fig.chart.to_dict()
        pooled = (
            f"<p class='warn'>pooled over {html.escape(', '.join(fig.lay.pooled))}</p>"
            if fig.lay is not None and fig.lay.pooled
            else ""
        )
        body.append(
            f"<h3>{html.escape(title)}</h3>{pooled}<div class='chart' id='{cid}'></div>"
            f"<details><summary>SQL</summary><pre>{html.escape(fig.sql)}</pre>"
            "</details>"
        )
    body += [f"<p class='muted'>{html.escape(p)}</p>" for p in problems]
    return body, specs


def _analyses_section(
    store: Path, study: str, names: list[str], epsilon: float | None, eps_note: str
) -> list[str]:

    body = ["<h2>Analyses</h2>"]
    for name in names:
        body.append(f"<h3>{html.escape(name)}{html.escape(eps_note if name == 'sfo' else '')}</h3>")
        try:
            result = run_analysis(store, name, study, "best_test_acc", epsilon=epsilon)
            body.append(result_html(result))
        except OptlabError as e:
            body.append(f"<p class='muted'>{html.escape(str(e))}</p>")
    if not names:
        body.append("<p class='muted'>no analysis fits this study's axes</p>")
    return body


def _write_page(out: Path, study: str, body: list[str], specs: dict[str, Any]) -> None:
    """The page, with Vega's scripts inlined (it opens without a network)."""

    import altair as alt  # altair: slow to import, so only when a chart is drawn
    import vl_convert as vlc  # vl-convert: only when a page is written

    # vl-convert names Vega-Lite versions like "v6_4" (Altair's schema is "v6.4.1").
    bundle = vlc.javascript_bundle(vl_version="_".join(alt.SCHEMA_VERSION.split(".")[:2]))
    page = PAGE.format(
        title=html.escape(study),
        bundle=bundle.replace("</script", "<\\/script"),
        body="\n".join(body),
        specs=json.dumps(specs).replace("</", "<\\/"),
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page)
    except OSError as e:
        raise OptlabError(f"--out {out}: cannot write: {e.strerror or e}") from None
