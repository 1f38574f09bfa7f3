"""optlab from Python (a notebook): the study, the store, the charts and the analyses the
CLI prints, as objects.

    import optlab

    study = optlab.load_study("studies/quickstart.toml")
    [run.run_id for run in optlab.study_runs(study)]
    store = optlab.open_store("optlab.duckdb")
    store.sql("select optimizer_lr, avg(best_test_acc) from runs group by all").df()
    store.runs(study="quickstart").df()
    store.epochs("0bb1807a601b").df()
    store.plot("heatmap")                 # an Altair chart: shown by the notebook
    store.analyze("optimal").to_json()

The handle is read-only and holds the store file only while it reads: ``sql`` copies its
result into memory (a DuckDB relation: ``.df()``, ``.pl()``, ``.arrow()``, ``.fetchall()``),
so a study running meanwhile is never kept from writing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optlab.errors import OptlabError, StoreError
from optlab.study import Study
from optlab.study import load_study as _load_study

PLOTS = ("heatmap", "curves", "sensitivity", "scaling", "sfo", "gradnorm", "probes")


def load_study(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Study:
    """A study file, read and checked as ``optlab show`` does (``sets``: ``KEY=VALUE`` as
    with ``--set``); :func:`study_runs` expands it."""
    return _load_study(path, list(sets))


def study_runs(study: Study) -> list[Any]:
    """Every run the study stands for (run_id, block, seed, config, axes), in order."""
    from optlab.expand import all_runs, expand

    return all_runs(expand(study))


def open_store(path: str | Path = "optlab.duckdb") -> Store:
    return Store(Path(path))


class Store:
    """A read-only view of an optlab store."""

    def __init__(self, path: Path):
        if not path.exists():
            raise StoreError(f"{path}: no store here yet; run a study first (optlab run)")
        self.path = path

    def __repr__(self) -> str:
        return f"optlab.Store({str(self.path)!r})"

    def sql(self, query: str, *params: Any) -> Any:
        """The result of ``query`` (``?`` placeholders for ``params``) as a DuckDB relation
        in memory, over the store's tables and views (``runs``, ``epochs``, ``probes``,
        ``run_summary``, ...)."""
        import duckdb

        mem = duckdb.connect()
        try:
            mem.execute(f"attach '{self.path.resolve()}' as store (read_only)")
        except duckdb.Error as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise StoreError(f"{self.path}: cannot read it: {first}") from None
        try:
            mem.execute("use store")
            mem.execute(f"create table memory.main.result as {query}", list(params))
        except duckdb.Error as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise OptlabError(f"query: {first}") from None
        finally:
            mem.execute("use memory")
            mem.execute("detach store")
        return mem.table("result")

    def studies(self) -> list[str]:
        return [name for (name,) in self.sql("select study from studies order by study").fetchall()]

    def runs(self, study: str | None = None) -> Any:
        """One row per run (config columns, status, summary): the ``runs`` view."""
        if study is None:
            return self.sql("select * from runs order by study, position")
        return self.sql("select * from runs where study = ? order by position", study)

    def epochs(self, run_id: str) -> Any:
        return self.sql("select * from epochs where run_id = ? order by epoch", run_id)

    def probes(self, run_id: str) -> Any:
        return self.sql(
            "select * from probes where run_id = ? order by epoch, step, probe, key", run_id
        )

    def plot(
        self,
        kind: str,
        out: str | Path | None = None,
        study: str | None = None,
        where: str | None = None,
        blocks: tuple[str, ...] = (),
        facet: tuple[str, ...] | None = None,
        **options: Any,
    ) -> Any:
        """The chart ``optlab plot KIND`` draws (same options, by their long names less the
        dashes: ``metric``, ``x``, ``y``, ``color``, ``epsilon``, ``probe``, ``key``), as a
        :class:`optlab.figures.Figure`; its ``.chart`` is the Altair chart, which a notebook
        shows. Saved to ``out`` (.html, .png, .svg) when given."""
        from optlab import charts, figures
        from optlab.results import open_study, parse_metric

        if kind not in PLOTS:
            raise OptlabError(f"plot {kind!r}: charts are {', '.join(PLOTS)}")
        make = getattr(charts, f"{kind}_figure")
        sel = figures.Selection(where, tuple(blocks), facet)
        if "metric" in options and kind in ("heatmap", "sensitivity", "scaling"):
            parse_metric(options["metric"])
        defaults = {
            "heatmap": {"x": None, "y": None, "metric": "best_test_acc"},
            "sfo": {"epsilon": None},
            "gradnorm": {"epsilon": None},
            "probes": {"probe": None},
        }.get(kind, {})
        if out is not None:
            figures.check_out(Path(out))
        with open_study(self.path, study) as (con, name, axes):
            try:
                figure = make(con, name, axes, sel=sel, **{**defaults, **options})
            except TypeError as e:
                if "unexpected keyword argument" not in str(e):
                    raise
                raise OptlabError(f"plot {kind}: {e}") from None
        figure.study = name
        if out is not None:
            figures.save(figure, Path(out))
        return figure

    def analyze(
        self, name: str, study: str | None = None, metric: str = "best_test_acc", **options: Any
    ) -> Any:
        """What ``optlab analyze NAME`` computes (``param``, ``epsilon``, ``seed``), as a
        result object with ``.to_json()``."""
        from optlab.analyze import run_analysis

        return run_analysis(self.path, name, study, metric, **options)
