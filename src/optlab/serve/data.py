"""What the live page shows, as JSON-ready dicts read from the store: the studies, a study
(its runs as a grid, its default charts, its analyses), a run (its config, epochs, probes
and log), and the rows of a read-only SQL statement.

Each function opens the store read-only for its queries alone and closes it, so that the
study's writer waits at most for one short read. The charts and analyses are those of
``optlab plot`` and ``optlab report``: read from their tables, not drawn again here.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optlab.analysis.analyze import analyses_for, run_analysis, study_facts
from optlab.analysis.results import open_study, parse_metric
from optlab.analysis.status import StudyStatus, study_status
from optlab.charts.catalog import CHARTS
from optlab.charts.figures import ReportFacts
from optlab.charts.probe_charts import probe_names
from optlab.errors import OptlabError
from optlab.locations import resolve, roots
from optlab.store.core import STATES, reading
from optlab.store.query import sql_rows

GRID_LIMIT = 5000  # runs drawn one cell each; a larger study's grid is counts per block
SEARCH_CHARTS = ("scatter", "parallel")  # drawn for a study that searches
# Drawn only where the study has them: a search's charts, and the budget curves of
# optimizers tuned side by side on validation (where the report shows `analyze budget`).
OPTIONAL_CHARTS = (*SEARCH_CHARTS, "budget")
SQL_ROWS = 1000  # rows of a statement sent to the page (the rest are counted)
SQL_SECONDS = 5.0  # a statement from the page is stopped after this long
LOG_LINES = 60
RUN_COLUMNS = (
    "run_id",
    "seed",
    "status",
    "config",
    "attempts",
    "started_at",
    "finished_at",
    "wall_seconds",
    "device",
    "worker",
    "hostname",
    "error",
    "log_path",
    "checkpoint_epoch",
    "resumed_from",
    "weights_path",
    "optlab_version",
    "torch_version",
)


class NotFound(OptlabError):
    """A study or run the store does not hold (any more)."""


def clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, other odd values their text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


# ---- the studies ------------------------------------------------------------------------


def studies(store: Path) -> list[dict[str, Any]]:
    """Each study: runs by state (the names `optlab status` prints), epochs done of all,
    the ETA, and which run each worker has now."""
    found = study_status(store)
    with reading(store) as con:
        busy = con.execute(
            "select study, worker, run_id, epochs, "
            "(select count(*) from epochs e where e.run_id = r.run_id) "
            "from runs r where status = 'running' order by study, worker"
        ).fetchall()
    workers: dict[str, list[dict[str, Any]]] = {}
    for study, worker, run_id, epochs, done in busy:
        workers.setdefault(study, []).append(
            {"worker": worker, "run_id": run_id, "epoch": done, "epochs": epochs}
        )
    return [_study_row(s, workers.get(s.study, [])) for s in found]


def _study_row(s: StudyStatus, workers: list[dict[str, Any]]) -> dict[str, Any]:
    return clean(
        {
            "name": s.study,
            "counts": {state: s.counts.get(state, 0) for state in STATES},
            "runs": s.total,
            "matrix": s.matrix,
            "epochs_done": s.epochs_done,
            "epochs_total": s.epochs_total,
            "eta_seconds": s.eta_seconds,
            "running": bool(s.active_workers),
            "executor": s.executor,
            "nodes": s.nodes,
            "workers": workers,
            "gone": s.gone,
        }
    )


# ---- a study ----------------------------------------------------------------------------


def study(store: Path, name: str) -> dict[str, Any]:
    """The study's status, blocks and axes, and its grid: a cell per run (state, epochs)
    up to :data:`GRID_LIMIT` runs, else the counts per block and state, said so."""
    (status,) = _status(store, name)
    with open_named_study(store, name) as (con, name, axes):
        (description,) = con.execute(
            "select description from studies where study = ?", [name]
        ).fetchone()
        total = status.total
        told = {u["run_id"]: u for u in status.unfinished}
        told.update((r, {"status": s, "epochs_done": n}) for r, (s, n) in status.ended.items())
        grid = (_grid_cells if total <= GRID_LIMIT else _grid_counts)(con, name, told)
    return clean(
        {
            **_study_row(status, []),
            "description": description,
            "axes": list(axes),
            "grid": grid,
            "summarised": None
            if total <= GRID_LIMIT
            else f"{total:,} runs: the grid shows counts per block and state past "
            f"{GRID_LIMIT:,} runs; the table below lists runs",
        }
    )


@contextlib.contextmanager
def open_named_study(store: Path, name: str) -> Iterator[tuple[Any, str, Any]]:
    """:func:`open_study`, with a study the store does not hold as :class:`NotFound`."""
    with contextlib.ExitStack() as stack:
        try:
            opened = stack.enter_context(open_study(store, name))
        except OptlabError as e:
            if "no such study" in str(e):
                raise NotFound(f"no study {name!r} in {store}") from None
            raise
        yield opened


def _status(store: Path, name: str) -> list[StudyStatus]:
    try:
        return study_status(store, name)
    except OptlabError as e:
        if f"no study {name!r}" in str(e):
            raise NotFound(str(e)) from None
        raise


def _grid_cells(con: Any, name: str, told: dict[str, dict]) -> list[dict[str, Any]]:
    """A cell per run, in the study's order, in the state `optlab status` tells (``told``:
    a run left running by a writer that is gone is interrupted, at its journal's epoch)."""
    rows = con.execute(
        "select r.run_id, r.block, r.seed, r.status, r.axes, r.epochs, "
        "(select count(*) from epochs e where e.run_id = r.run_id) "
        "from runs r where r.study = ? order by r.position",
        [name],
    ).fetchall()
    cells = []
    for run_id, block, seed, status, axes, epochs, done in rows:
        if run_id in told:
            status, done = told[run_id]["status"], told[run_id]["epochs_done"]
        cells.append(
            {
                "run_id": run_id,
                "block": block,
                "seed": seed,
                "status": status,
                "axes": json.loads(axes or "{}"),
                "epochs": epochs,
                "epoch": done,
            }
        )
    return cells


def _grid_counts(con: Any, name: str, told: dict[str, dict]) -> list[dict[str, Any]]:
    """Runs per block (in the study's order) and state (in `optlab status`'s, which tells
    a run left running by a writer that is gone as interrupted)."""
    rows = con.execute(
        "select block, status, count(*), min(min(position)) over (partition by block) "
        "from runs where study = ? group by block, status",
        [name],
    ).fetchall()
    counts = {(b, st): n for b, st, n, _ in rows}
    first = {b: pos for b, _, _, pos in rows}
    if told:
        for run_id, block, stored in con.execute(
            "select run_id, block, status from runs where study = ? "
            "and run_id in (select unnest(?))",
            [name, list(told)],
        ).fetchall():
            now = told[run_id]["status"]
            if stored != now:
                counts[block, stored] -= 1
                counts[block, now] = counts.get((block, now), 0) + 1
    order = sorted(
        (k for k, n in counts.items() if n),
        key=lambda k: (first[k[0]], STATES.index(k[1]) if k[1] in STATES else len(STATES)),
    )
    return [{"block": b, "status": st, "runs": counts[b, st]} for b, st in order]


def study_charts(store: Path, name: str, metric: str | None = None) -> dict[str, Any]:
    """The default heatmap and curves, and a search's scatter and parallel coordinates, as
    `optlab plot` draws them (Vega-Lite specs), with what each pools; a chart that cannot
    be drawn yet says why. ``metric`` (a run's metric, such as ``final_test_acc``) is what
    the charts that value runs draw, as their ``--metric``. The store is held for each
    chart's queries alone; the spec is written out after."""
    if metric:
        parse_metric(metric)  # a bad one is one line, before the store is read
    out: dict[str, Any] = {}
    for kind in ("heatmap", "scatter", "parallel", "curves", "budget"):
        chart = CHARTS[kind]
        with open_named_study(store, name) as (con, found, axes):
            facts = ReportFacts(con, found, axes, probe_names(con, found), None)
            wanted = chart.report(facts)
            options = dict(wanted[0][1]) if wanted else {}
            if metric and any(o.name == "metric" and o.metric for o in chart.options):
                options["metric"] = metric
            drawn = _draw(chart, facts, options) if wanted else None
        if drawn is None and kind in OPTIONAL_CHARTS:
            continue  # the study has nothing these charts draw
        if drawn is None and getattr(axes, "searched", None):
            out[kind] = {"note": f"no {kind}: a search's points are drawn by scatter and parallel"}
        elif drawn is None:
            out[kind] = {"note": f"no {kind}: the study varies {len(axes)} axis(es)"}
        elif isinstance(drawn, str):
            out[kind] = {"note": drawn}
        else:
            out[kind] = _figure(drawn)
    return out


def _figure(drawn: Any) -> dict[str, Any]:
    """A drawn chart as the page embeds it: its spec, rows, what it pools and its SQL."""
    lay = drawn.lay
    return {
        "spec": drawn.chart.to_dict(validate=False),  # as drawn by the chart's code
        "rows": drawn.rows,
        "pooled": list(lay.pooled) if lay is not None else [],
        "panels": len(lay.panels) if lay is not None else 1,
        "sql": drawn.sql,
    }


def study_facts_for_page(store: Path, name: str) -> dict[str, Any]:
    """What the page offers beyond the report: a profile (times to a target the user
    types) where the study compares optimizers."""
    with open_named_study(store, name) as (con, name, axes):
        facts = study_facts(con, name, axes)
    return {"study": name, "profile": facts.optimizers > 1}


def study_profile(
    store: Path, name: str, target: str, time: str = "steps", order: str = "median-then-best"
) -> dict[str, Any]:
    """`optlab analyze profile --target` and `optlab plot profile` of the study: each
    optimizer's time to ``target`` per workload, and the performance profiles."""
    if not target:
        raise OptlabError("target: give COLUMN=VALUE to reach, such as val_acc=0.9")
    result = run_analysis(
        store, "profile", name, "best_test_acc", target=target, time=time, order=order
    )
    with open_named_study(store, name) as (con, found, axes):
        facts = ReportFacts(con, found, axes, [], None)
        drawn = _draw(CHARTS["profile"], facts, {"target": target, "time": time, "order": order})
    chart = {"note": drawn} if isinstance(drawn, str) else _figure(drawn)
    return clean({"analysis": result.to_json(), "chart": chart})


def _draw(chart: Any, facts: ReportFacts, options: dict[str, Any]) -> Any:
    """The figure, or the line that says why it cannot be drawn."""
    try:
        return chart.draw_for_page(facts, options)
    except OptlabError as e:
        return str(e)


def study_analyses(store: Path, name: str) -> list[dict[str, Any]]:
    """The analyses the report shows for the study, each as `optlab analyze --json` gives
    it, or the line that says why it cannot answer yet."""
    with open_named_study(store, name) as (con, name, axes):
        names = analyses_for(study_facts(con, name, axes))
    found = []
    for analysis in names:
        try:
            found.append(run_analysis(store, analysis, name, "best_test_acc").to_json())
        except OptlabError as e:
            found.append({"analysis": analysis, "error": str(e)})
    return clean(found)


# ---- a run ------------------------------------------------------------------------------


def run(store: Path, run_id: str) -> dict[str, Any]:
    """A run: its config and state, attempts, where it would resume, its studies, the
    probes it has values of, the tail of its log and its weights."""
    with reading(store) as con:
        row = con.execute(
            f"select {', '.join(RUN_COLUMNS)} from run_state where run_id = ?", [run_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id!r} in {store}")
        memberships = con.execute(
            "select study, block, axes from memberships where run_id = ? order by study",
            [run_id],
        ).fetchall()
        probes = con.execute(
            "select probe, list(distinct key order by key), count(*) from probes "
            "where run_id = ? group by probe order by probe",
            [run_id],
        ).fetchall()
    found = dict(zip(RUN_COLUMNS, row, strict=True))
    found["config"] = json.loads(found["config"] or "{}")
    here = roots(store)
    log = resolve(found["log_path"], here) if found["log_path"] else None
    weights = resolve(found["weights_path"], here) if found["weights_path"] else None
    found.update(
        log_path=str(log) if log else None,
        log_tail=_tail(log),
        weights_path=str(weights) if weights else None,
        studies=[
            {"study": s, "block": b, "axes": json.loads(a or "{}")} for s, b, a in memberships
        ],
        probes=[{"probe": p, "keys": k, "values": n} for p, k, n in probes],
    )
    return clean(found)


def _tail(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return text.splitlines()[-LOG_LINES:]


def run_epochs(store: Path, run_id: str) -> list[dict[str, Any]]:
    with reading(store) as con:
        cur = con.execute("select * from epochs where run_id = ? order by epoch", [run_id])
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
        if not rows and not _has_run(con, run_id):
            raise NotFound(f"no run {run_id!r} in {store}")
    return clean([dict(zip(columns, r, strict=True)) for r in rows])


def run_probes(store: Path, run_id: str) -> list[dict[str, Any]]:
    with reading(store) as con:
        rows = con.execute(
            "select probe, key, epoch, step, value from probes where run_id = ? "
            "order by probe, key, epoch, step",
            [run_id],
        ).fetchall()
        if not rows and not _has_run(con, run_id):
            raise NotFound(f"no run {run_id!r} in {store}")
    return clean(
        [{"probe": p, "key": k, "epoch": e, "step": s, "value": v} for p, k, e, s, v in rows]
    )


def _has_run(con: Any, run_id: str) -> bool:
    (n,) = con.execute("select count(*) from run_state where run_id = ?", [run_id]).fetchone()
    return bool(n)


# ---- SQL --------------------------------------------------------------------------------


def sql(store: Path, statement: str) -> dict[str, Any]:
    """The rows of one statement, under exactly `optlab query`'s read-only rules; the
    first :data:`SQL_ROWS` of them (the rest counted, not held), and how many there were.
    A statement is stopped after :data:`SQL_SECONDS`: the page never holds the store from
    a running study's writer longer."""
    columns, rows, total = sql_rows(store, statement, keep=SQL_ROWS, seconds=SQL_SECONDS)
    return clean({"columns": columns, "rows": [list(r) for r in rows], "total": total})
