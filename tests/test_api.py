"""optlab from Python: the study, a read-only store handle, the charts and the analyses,
as a notebook would use them."""

from __future__ import annotations

import json

import duckdb
import pytest

import optlab
from optlab.errors import OptlabError, StoreError
from tests.synth import make_store
from tests.test_charts import STUDY, acc


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_store(tmp_path, STUDY, acc)
    return optlab.open_store(tmp_path / "optlab.duckdb")


def test_a_study_and_its_runs(tmp_path, store, cli):
    study = optlab.load_study("s.toml")
    runs = optlab.study_runs(study)
    assert len(runs) == 3 * (4 + 8)
    assert f"{len(runs)} runs" in cli("show", "s.toml").stdout
    assert optlab.load_study("s.toml", sets=["seeds=[0]"]).seeds == [0]


def test_sql_runs_epochs_out_of_the_store_without_holding_it(store):
    rel = store.sql("select block, count(*) as n from runs group by block order by block")
    assert rel.fetchall() == [("large", 24), ("small", 12)]
    assert list(rel.df()["n"]) == [24, 12]  # pandas
    # the relation lives in memory: the writer can take the file while it is held here
    con = duckdb.connect(str(store.path))
    con.execute("create table scratch as select 1")
    con.close()
    assert rel.fetchall() == [("large", 24), ("small", 12)]
    runs = store.runs(study="two").df()
    assert len(runs) == 36 and runs["position"].is_monotonic_increasing
    first = runs["run_id"][0]
    assert [e for (e,) in store.epochs(first).project("epoch").fetchall()] == [1, 2, 3]
    assert store.sql("select count(*) from epochs where run_id = ?", first).fetchall() == [(3,)]
    assert store.studies() == ["two"]


def test_charts_and_analyses_are_what_the_cli_makes(store, tmp_path, cli):
    figure = store.plot("heatmap", x="optimizer.lr", y="batch_schedule.batch_size")
    assert type(figure.chart).__module__.startswith("altair")
    assert list(figure.lay.facet) == ["block", "optimizer.momentum"]
    out = tmp_path / "h.svg"
    store.plot("heatmap", out=out, x="optimizer.lr", y="batch_schedule.batch_size")
    assert out.read_text().startswith("<svg") and (tmp_path / "h.svg.sql").exists()
    printed = cli("analyze", "optimal", "--json").stdout
    assert store.analyze("optimal").to_json() == json.loads(printed)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda s: s.plot("pie"), "plot 'pie': charts are heatmap, curves, sensitivity"),
        (lambda s: s.plot("curves", colour="block"), "plot curves: "),
        (lambda s: s.sql("select nope from runs"), "query: Binder Error"),
    ],
)
def test_mistakes_are_optlab_errors(store, call, message):
    with pytest.raises(OptlabError, match=message):
        call(store)


def test_no_store(tmp_path):
    with pytest.raises(StoreError, match="no store here yet"):
        optlab.open_store(tmp_path / "none.duckdb")
