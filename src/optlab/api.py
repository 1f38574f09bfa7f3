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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console

from optlab.analysis.analyze import run_analysis
from optlab.analysis.results import open_study
from optlab.charts import catalog, figures
from optlab.errors import OptlabError, StoreError
from optlab.execution import executors
from optlab.execution.launch import Launch, Part, launch
from optlab.states import State
from optlab.study.expand import all_runs, expand
from optlab.study.schema import Study, single_run
from optlab.study.schema import load_study as _load_study


def load_study(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Study:
    """A study file, read and checked as ``optlab show`` does (``sets``: ``KEY=VALUE`` as
    with ``--set``); :func:`study_runs` expands it."""
    return _load_study(path, list(sets))


def study_runs(study: Study) -> list[Any]:
    """Every run the study stands for (run_id, block, seed, config, axes), in order."""

    return all_runs(expand(study))


@dataclass
class Trained:
    """What :func:`train` gives back: the run, its summary (a row of ``run_summary``) and its
    epoch rows (a pandas DataFrame)."""

    run_id: str
    status: str
    summary: dict[str, Any]
    epochs: Any


def train(
    config: dict[str, Any] | None = None,
    *,
    study: str | Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    seed: int = 0,
    store: str | Path = "optlab.duckdb",
    gpus: str | None = None,
    data_dir: str | Path = "data",
) -> Trained:
    """Train one configuration, as `optlab train` does (seed 002's ``train(config)`` from a
    notebook): ``config`` (nested: ``{"optimizer": {"lr": 0.1}, "epochs": 5}``) and ``sets``
    over the ``[base]`` of ``study`` (default: the quickstart's), into ``store`` as a run of
    study ``train``. A finished identical run is not trained again: its results come back."""

    spec = single_run(study, list(sets), seed)
    if config:
        spec = spec.model_copy(update={"overrides": {**spec.overrides, **config}})
    (run,) = all_runs(expand(spec))
    how = Launch(gpus, 1, 1, False, Path(data_dir), None, 600.0, executors.DEFAULT, {}, Path(store))
    out, err = (Console(stderr=e, highlight=False, soft_wrap=True) for e in (False, True))
    code = launch([Part(spec, expand(spec), None)], how, out, err)[1]
    if code == 130:
        raise KeyboardInterrupt
    # a failed or diverged run: its status and rows say so
    found = open_store(store)
    summary = found.sql("select * from run_summary where run_id = ?", run.run_id).df()
    row = summary.to_dict("records")[0] if len(summary) else {}
    return Trained(run.run_id, row.get("status", State.PENDING), row, found.epochs(run.run_id).df())


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
        :class:`optlab.charts.figures.Figure`; its ``.chart`` is the Altair chart, which a notebook
        shows. Saved to ``out`` (.html, .png, .svg) when given."""

        chart = catalog.chart(kind)
        sel = figures.Selection(where, tuple(blocks), facet)
        chart.settle(options)  # a bad option or metric said before the store is opened
        if out is not None:
            figures.check_out(Path(out))
        with open_study(self.path, study) as (con, name, axes):
            figure = chart.draw(con, name, axes, sel, options)
        if out is not None:
            figures.save(figure, Path(out))
        return figure

    def analyze(
        self, name: str, study: str | None = None, metric: str = "best_test_acc", **options: Any
    ) -> Any:
        """What ``optlab analyze NAME`` computes (``param``, ``epsilon``, ``seed``), as a
        result object with ``.to_json()``."""

        return run_analysis(self.path, name, study, metric, **options)
