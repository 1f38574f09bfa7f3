"""What every chart shares: which runs it draws (:class:`Selection`), its panels and what
it still pools (:func:`layout`), the :class:`Figure` and how it is saved: `.html`
(self-contained, opens offline), `.png` or `.svg`, with the SQL that produced its data
beside it (``<out>.sql``), so that `optlab query` reproduces it; and what a chart's row in
the table of charts says (:class:`Chart`: its options, its help, when the report draws it).
The table itself is :mod:`optlab.charts.catalog`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from optlab.analysis.results import axis_sql, parse_metric
from optlab.errors import OptlabError
from optlab.store.sql import q

OUT_SUFFIXES = (".html", ".png", ".svg")

MAX_PANELS = 48


@dataclass(frozen=True)
class Selection:
    """Which runs a chart draws and how it splits them into panels.

    ``where``: an SQL condition on the ``runs`` view (its columns: ``block``, ``seed``,
    ``status`` and one per config path, ``optimizer_lr``...). ``blocks``: only these blocks.
    ``facet``: the panels, by ``block`` and by axes the chart does not show; ``None`` gives
    the default, one panel per block and per value of every axis not shown that varies.
    """

    where: str | None = None
    blocks: tuple[str, ...] = ()
    facet: tuple[str, ...] | None = None


class TooManyPanels(OptlabError):
    """More panels than a page can hold: narrow the runs or name fewer panels."""


@dataclass
class Layout:
    """The runs a chart draws, its panels and what it still pools (said in its title)."""

    condition: str
    facet: list[str]
    pooled: list[str]
    panels: list[str]
    axes: Any = None  # the study's Axes: how each axis' value reads
    # A panel axis some blocks do not vary: the blocks that do (the others' panels are not
    # split on it, nor named by it).
    only_in: dict[str, list[str]] = field(default_factory=dict)

    def sql(self, axis: str) -> str:
        """SQL of a run's value of ``axis`` (a plugin table's label: see results.Axes)."""
        return axis_sql(self.axes, axis)

    @property
    def panel_sql(self) -> str:
        if not self.facet:
            return "'all'"
        parts = [
            label_sql(a, self.axes)
            if a not in self.only_in
            else f"case when r.block in ({_sql_list(self.only_in[a])}) "
            f"then {label_sql(a, self.axes)} end"
            for a in self.facet
        ]
        return "concat_ws(' · ', " + ", ".join(parts) + ")"

    def pooling(self, over: str = "seeds") -> str:
        """``mean over seeds``, and the axes pooled with them."""
        if not self.pooled:
            return f"mean over {over}"
        return f"mean over {over} and POOLED over {', '.join(self.pooled)}"


def _sql_list(names: list[str]) -> str:
    return ", ".join("'" + q(n) + "'" for n in names)


def label_sql(axis: str, axes: Any = None) -> str:
    """SQL of a run's ``axis=value`` (``block NAME`` for the block), for labels."""
    if axis == "block":
        return "'block ' || r.block"
    return f"'{axis}=' || coalesce(({axis_sql(axes, axis)})::varchar, '-')"


def layout(
    con: Any, study: str, axes: list[str], shown: list[str], sel: Selection, chart: str
) -> Layout:
    """Check the selection against the study and work out panels and pooling.

    Everything that tells runs apart and is neither on the chart nor a panel is pooled;
    the caller puts :meth:`Layout.pooling` in the title and the output line.
    """
    condition = f"r.study = '{q(study)}'"
    blocks = [
        b
        for (b,) in con.execute(
            "select block from memberships where study = ? group by block order by min(position)",
            [study],
        ).fetchall()
    ]
    for block in sel.blocks:
        if block not in blocks:
            raise OptlabError(
                f"--block {block!r}: study {study!r} has no such block; its "
                f"blocks: {', '.join(blocks)}"
            )
    if sel.blocks:
        condition += " and r.block in (" + ", ".join(f"'{q(b)}'" for b in sel.blocks) + ")"
    if sel.where:
        _check_where(con, sel.where)
        condition += f" and ({sel.where})"
    candidates = [a for a in ["block", *axes] if a not in shown]
    if sel.facet is not None:
        for axis in sel.facet:
            if axis not in candidates:
                raise OptlabError(
                    f"--facet {axis}: use block or an axis the {chart} chart does not show "
                    f"({', '.join(candidates) or 'none left'})"
                )
    cols = {
        a: ("r.block" if a == "block" else f"({axis_sql(axes, a)})")
        for a in dict.fromkeys([*candidates, *shown])
    }
    rows = con.execute(
        f"select {', '.join(c + '::varchar' for c in cols.values())} from runs r "
        f"where {condition} order by r.position"
    ).fetchall()
    if not rows:
        raise OptlabError(f"{chart}: no runs of study {study!r} match the selection")
    values = [dict(zip(cols, row, strict=True)) for row in rows]
    only_in: dict[str, list[str]] = {}
    if sel.facet is None:
        searched = getattr(axes, "searched", set())  # a search's points are not panels
        facet = [a for a in candidates if len({v[a] for v in values}) > 1 and a not in searched]
        only_in = _varied_in_blocks(values, facet)
        # Varied across blocks only, never within one: the block panels already split it.
        facet = [a for a in facet if only_in.get(a, True)]
        only_in = {a: blocks for a, blocks in only_in.items() if blocks}
    else:
        facet = list(sel.facet)
    kept = facet + shown
    pooled = []
    for axis in candidates:
        if axis in facet:
            continue
        seen: dict[tuple, set] = {}
        for v in values:
            seen.setdefault(tuple(v[k] for k in kept), set()).add(v[axis])
        widest = max(len(s) for s in seen.values())
        if widest > 1:
            pooled.append(f"{axis} ({widest} values)")
    panels = (
        list(dict.fromkeys(_panel_label(v, facet, only_in) for v in values)) if facet else ["all"]
    )
    if len(panels) > MAX_PANELS:
        raise TooManyPanels(
            f"{chart}: {len(panels)} panels (one per {' × '.join(facet)}); narrow the runs "
            f"with --where or --block, or name fewer panels with --facet (what is left is "
            f"then pooled, and the chart says so)"
        )
    return Layout(condition, facet, pooled, panels, axes, only_in)


def _varied_in_blocks(values: list[dict[str, Any]], facet: list[str]) -> dict[str, list[str]]:
    """{panel axis: the blocks that vary it}, for the axes some block holds fixed (AdamW's
    block has no momentum: its panel is not one on momentum = none)."""
    if "block" not in facet:
        return {}
    blocks = list(dict.fromkeys(v["block"] for v in values))
    only_in = {}
    for axis in facet:
        if axis == "block":
            continue
        varying = [b for b in blocks if len({v[axis] for v in values if v["block"] == b}) > 1]
        if len(varying) < len(blocks):
            only_in[axis] = varying
    return only_in


def _panel_label(
    values: dict[str, Any], facet: list[str], only_in: dict[str, list[str]] | None = None
) -> str:
    """The panel's name as :meth:`Layout.panel_sql` writes it (DuckDB's varchar of each)."""
    only_in = only_in or {}
    parts = [
        ("block " if a == "block" else f"{a}=") + (values[a] if values[a] is not None else "-")
        for a in facet
        if a not in only_in or values["block"] in only_in[a]
    ]
    return " · ".join(parts)


def _check_where(con: Any, where: str) -> None:

    if ";" in where:
        raise OptlabError(f"--where {where!r}: one condition, without ';'")
    try:
        con.execute(f"select count(*) from runs r where ({where})").fetchone()
    except duckdb.Error as e:
        first = str(e).strip().splitlines()[0]
        raise OptlabError(f"--where {where!r}: not a condition on the runs view: {first}") from None


@dataclass
class Figure:
    """A chart, the SQL that produced its data, how many rows that was, and what it pools."""

    kind: str
    chart: Any
    sql: str
    rows: int
    lay: Layout | None = None
    study: str = ""  # the study it draws

    def summary(self, path: Path) -> str:
        line = (
            f"heatmap of {self.rows} cells"
            if self.kind == "heatmap"
            else f"{self.kind} chart of {self.rows} rows"
        )
        if self.lay is not None and len(self.lay.panels) > 1:
            line += f" in {len(self.lay.panels)} panels (by {', '.join(self.lay.facet)})"
        line += f" written to {path} (its SQL: {path}.sql)"
        if self.lay is not None and self.lay.pooled:
            line += f"; POOLED over {', '.join(self.lay.pooled)}"
        return line


def check_out(out: Path | None) -> None:
    if out is not None and out.suffix not in OUT_SUFFIXES:
        raise OptlabError(f"--out {out}: use a file ending in {', '.join(OUT_SUFFIXES)}")


def save(figure: Figure, out: Path) -> None:
    _save(figure.chart, out)
    out.with_name(out.name + ".sql").write_text(figure.sql + ";\n")


def _save(chart: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if out.suffix == ".html":
            chart.save(str(out), inline=True)  # Vega's scripts embedded: opens offline
        else:
            chart.save(str(out), scale_factor=2 if out.suffix == ".png" else 1)
    except OSError as e:
        raise OptlabError(f"--out {out}: cannot write: {e.strerror or e}") from None


# ---- a row of the table of charts ---------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One of a chart's own options: a keyword of its figure function, ``--NAME`` on the
    command line. ``metric``: a REDUCER_COLUMN, checked before the store is opened."""

    name: str
    default: Any
    help: str
    type: type = str
    metric: bool = False


COLOR = Option(
    "color",
    None,
    "Axis that colours the lines (default: the optimizer when it varies, else the first "
    "axis); block; or cell (block and every axis: one line per cell, nothing pooled).",
)


@dataclass(frozen=True)
class ReportFacts:
    """What the report knows of a study when it picks its charts."""

    con: Any
    study: str
    axes: Any
    probes: list[str]  # the probes with values
    epsilon: float | None  # the full gradient norm the sfo chart reaches for


@dataclass(frozen=True)
class Chart:
    """A row of the table of charts: what ``optlab plot NAME``, ``Store.plot(NAME)`` and
    the report read. ``figure(con, study, axes, **options, sel=...)`` draws it; ``report``
    gives, for a study, the (title, options) of each copy the report shows (none: not in
    the report); ``facet``: whether it takes ``--facet`` (no: every axis is on it)."""

    name: str
    figure: Callable[..., Figure]
    help: str
    options: tuple[Option, ...] = ()
    facet: bool = True
    report: Callable[[ReportFacts], list[tuple[str, dict[str, Any]]]] = field(
        default=lambda facts: []
    )

    def settle(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options given, checked by name (and metric), over the row's defaults."""
        known = {o.name: o for o in self.options}
        for name in options:
            if name not in known:
                raise OptlabError(
                    f"plot {self.name}: no option {name!r}; its options are "
                    f"{', '.join(known) or 'none'}"
                )
        settled = {o.name: options.get(o.name, o.default) for o in self.options}
        for o in self.options:
            if o.metric:
                parse_metric(settled[o.name])
        return settled

    def draw(self, con: Any, study: str, axes: Any, sel: Selection, options: dict) -> Figure:
        _lean_altair()
        figure = self.figure(con, study, axes, **self.settle(options), sel=sel)
        figure.study = study
        return figure

    def draw_for_page(self, facts: ReportFacts, options: dict) -> Figure:
        """As a page shows it (the report, optlab serve): the default panels, or, when they
        are too many for a page, one per block with the rest pooled (and said)."""
        try:
            return self.draw(facts.con, facts.study, facts.axes, Selection(), options)
        except TooManyPanels:
            sel = Selection(facet=("block",))
            return self.draw(facts.con, facts.study, facts.axes, sel, options)


def _lean_altair() -> None:
    """Altair checks every piece of a chart against its schema as it is built (its debug
    mode), then the whole when it is saved: the second suffices, and the first took 1.3 of
    the 1.7 s a 100 x 100 heatmap took to build."""
    import altair as alt  # altair: slow to import, so only when a chart is drawn

    alt.utils.schemapi.disable_debug_mode()


def when_varied(*needed: str) -> Callable[[ReportFacts], list[tuple[str, dict[str, Any]]]]:
    """A chart row's ``report``: draw the chart once (with its defaults) when the study
    varies these axes."""

    def in_report(facts: ReportFacts) -> list[tuple[str, dict[str, Any]]]:
        return [("", {})] if all(a in facts.axes for a in needed) else []

    return in_report
