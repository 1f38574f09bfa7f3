"""Charts that compare optimizers as they were tuned: ``budget``, each one's expected best
validation metric against the number of trials k (Dodge et al. 2019), with its spread and
the test metric of the run validation selects (:mod:`optlab.analysis.budget`); and
``profile``, the performance profiles of their times to a target across workloads
(Dolan and More 2002; :mod:`optlab.analysis.profile`).
"""

from __future__ import annotations

from typing import Any

from optlab.analysis import budget, profile
from optlab.analysis.analyze import ANALYSES, study_facts
from optlab.analysis.core import Asked, Result
from optlab.analysis.results import jsonable, parse_metric, reduce_sql
from optlab.charts.figures import Chart, Figure, Option, ReportFacts, Selection, layout


def budget_sql(condition: str, metric: str) -> str:
    """Each finished run's validation and test metric: what the curves are made from."""
    val = budget.validation_metric(metric)
    reduce_val, reduce_test = (reduce_sql(*parse_metric(m)) for m in (val, metric))
    return f"""select r.run_id, r.block, r.optimizer, r.seed, {reduce_val} as {val},
       {reduce_test} as {metric}
from runs r left join epochs e using (run_id)
where {condition} and r.status = 'done'
group by all order by r.run_id"""


def _selected(con: Any, study: str, axes: Any, sel: Selection, chart: str) -> tuple[Any, set]:
    """The layout (every axis is searched over within a group: nothing is a panel, nothing
    else pooled) and the runs the selection keeps."""
    lay = layout(con, study, axes, ["block", *axes], Selection(sel.where, sel.blocks, ()), chart)
    picked = con.execute(f"select run_id from runs r where {lay.condition}").fetchall()
    return lay, {run_id for (run_id,) in picked}


def budget_figure(
    con: Any,
    study: str,
    axes: Any,
    metric: str = "best_test_acc",
    by: str | None = None,
    sel: Selection = Selection(),
) -> Figure:
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    lay, chosen = _selected(con, study, axes, sel, "budget")
    sql = budget_sql(lay.condition, metric)
    result, asked = Result("budget", study, metric), Asked(by=by)
    runs = [r for r in budget.read(con, result, asked) if r.run_id in chosen]
    budget.answer(result, runs, axes, None, asked)
    group = by or "optimizer"
    val = asked.found["validation"]
    rows = [
        {
            "group": str(r[group]),
            "k": r["k"],
            "mean": r[f"expected_best_{val}"],
            "low": r[f"expected_best_{val}"] - r["std"],
            "high": r[f"expected_best_{val}"] + r["std"],
            "test": r[f"{metric}_of_selected"],
        }
        for r in result.tables.get("budget", [])
    ]
    base = alt.Chart(alt.Data(values=jsonable(rows))).encode(
        x=alt.X("k:Q", title="trials (k)"), color=alt.Color("group:N", title=group)
    )
    band = base.mark_area(opacity=0.2).encode(y="low:Q", y2="high:Q")
    line = base.mark_line().encode(
        y=alt.Y("mean:Q", title=f"{val} of the best of k", scale=alt.Scale(zero=False)),
        tooltip=["group:N", "k:Q", "mean:Q", "low:Q", "high:Q", "test:Q"],
    )
    test = base.mark_line(strokeDash=[4, 3]).encode(y="test:Q")
    note = result.findings.get("budget") or result.findings.get("note", "")
    chart = alt.layer(band, line, test).properties(
        width=480,
        height=300,
        title={
            "text": f"{study}: the expected {val} of the best of k trials (Dodge et al. 2019)",
            "subtitle": [
                f"each {group}'s trials: all its finished runs (its search space and seeds); "
                f"band = +-1 sd of the best; dashed: {metric} of the run validation selects",
                note,
            ],
        },
    )
    return Figure("budget", chart, sql, len(rows), lay)


def _in_report(facts: ReportFacts) -> list[tuple[str, dict[str, Any]]]:
    """Where the report shows `analyze budget`, it draws it too."""
    shown = ANALYSES["budget"].shown_for(study_facts(facts.con, facts.study, facts.axes))
    return [("", {})] if shown else []


def profile_figure(
    con: Any,
    study: str,
    axes: Any,
    target: str | None = None,
    time: str = "steps",
    order: str = "median-then-best",
    sel: Selection = Selection(),
) -> Figure:
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    lay, chosen = _selected(con, study, axes, sel, "profile")
    result = Result("profile", study, "best_test_acc")
    asked = Asked(target=target, time=time, order=order)
    runs = [r for r in profile.read(con, result, asked) if r.run_id in chosen]
    profile.answer(result, runs, axes, None, asked)
    found = asked.found
    sql = profile.times_sql(study, found["column"], found["target"], found["unit"])
    rows = result.tables.get("profile", [])
    chart = (
        alt.Chart(alt.Data(values=jsonable(rows)))
        .mark_line(interpolate="step-after", point=True)
        .encode(
            x=alt.X("tau:Q", title="tau (time over the fastest's)", scale=alt.Scale(type="log")),
            y=alt.Y("fraction:Q", title="fraction of workloads", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("optimizer:N"),
            tooltip=["optimizer:N", "tau:Q", "fraction:Q"],
        )
        .properties(
            width=480,
            height=300,
            title={
                "text": f"{study}: performance profiles, {asked.found['unit']} to "
                f"{asked.found['column']} {asked.found['target']:g}",
                "subtitle": [
                    result.findings.get("rule", ""),
                    result.findings.get("note", ""),
                ],
            },
        )
    )
    return Figure("profile", chart, sql, len(rows), lay)


CHARTS = (
    Chart(
        "budget",
        budget_figure,
        "Each optimizer's expected best validation metric over k trials (Dodge et al.), "
        "with the test metric of the run validation selects.",
        (
            Option(
                "metric",
                "best_test_acc",
                "The test metric reported (REDUCER_COLUMN); selection reads its validation "
                "counterpart.",
                metric=True,
            ),
            Option("by", None, "What is compared (default optimizer; or an axis)."),
        ),
        facet=False,
        report=_in_report,
    ),
    Chart(
        "profile",
        profile_figure,
        "Performance profiles: the fraction of workloads (dataset x model) on which each "
        "optimizer reaches --target within a factor tau of the fastest.",
        (
            Option("target", None, "COLUMN=VALUE to reach, such as val_acc=0.9."),
            Option("time", "steps", "Time in steps, sfo (samples) or seconds."),
            Option(
                "order",
                "median-then-best",
                "median-then-best (a configuration's median over seeds, then the best "
                "configuration) or best-then-median (AlgoPerf's).",
            ),
        ),
        facet=False,
    ),
)
