"""optlab merge: a study run in parts on two machines, brought into one store."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import optlab, write_study

pytestmark = pytest.mark.slow  # real worker processes

TWO_LRS = "[0.01, 0.1]"


@pytest.fixture(scope="session")  # made once a worker, however its tests are spread
def finished(tmp_path_factory):
    """The tiny study (two LRs, two seeds) run to the end once: each test that needs a
    finished store takes its own copy of this folder."""
    folder = tmp_path_factory.mktemp("finished")
    write_study(folder, TWO_LRS)
    optlab("run", "tiny.toml", cwd=folder, check=True)
    return folder


def copy_of(finished, folder):
    shutil.copytree(finished, folder)
    return folder


def rows(folder, sql, store="optlab.duckdb"):
    return json.loads(
        optlab("query", sql, "--format", "json", "--store", store, cwd=folder, check=True).stdout
    )


def test_a_study_run_in_two_halves_merges_into_the_whole(tmp_path, finished):
    a, b, whole = tmp_path / "a", tmp_path / "b", finished
    for folder in (a, b):
        folder.mkdir()
        write_study(folder, TWO_LRS)
    # Machine a runs seed 0, machine b seed 1; `finished` ran everything, for reference.
    optlab("run", "tiny.toml", "--set", "seeds=[0]", cwd=a, check=True)
    optlab("run", "tiny.toml", "--set", "seeds=[1]", cwd=b, check=True)
    merged = optlab("merge", str(b / "optlab.duckdb"), cwd=a, check=True)
    assert (
        "4 new runs, 0 replaced by a further copy, 0 kept as they were here" in merged.stdout
        and "runs joined to tiny" in merged.stdout
    )
    assert rows(a, "select count(*) as n from runs where study = 'tiny'") == [{"n": 8}]
    again = optlab("run", "tiny.toml", cwd=a, check=True)
    assert "Nothing to run" in again.stdout
    sql = "select run_id, epoch, train_loss, test_acc from epochs order by run_id, epoch"
    assert rows(a, sql) == rows(whole, sql)  # bit for bit, on the CPU
    assert len({r["run_id"] for r in rows(a, sql)}) == 8
    # The journals came along: the merged store can be rebuilt from them.
    assert (a / "optlab.runs").is_dir()
    journals = {p.parent.name for p in (a / "optlab.runs").glob("*/events.jsonl")}
    assert journals == {r["run_id"] for r in rows(a, sql)}


def test_two_finished_copies_keep_this_stores_and_the_other_store_is_untouched(tmp_path, finished):
    done, partial = (copy_of(finished, tmp_path / name) for name in ("done", "partial"))
    before = rows(done, "select count(*) as n from epochs")[0]["n"]
    merged = optlab("merge", str(done / "optlab.duckdb"), cwd=partial, check=True)
    assert "0 new runs, 0 replaced by a further copy, 8 kept as they were here" in merged.stdout
    # The other store is untouched.
    assert rows(done, "select count(*) as n from epochs")[0]["n"] == before


def test_a_half_done_copy_is_replaced_by_the_finished_one(tmp_path, finished):
    from optlab.store import core as st

    cut = copy_of(finished, tmp_path / "cut")
    # In `cut`, one run lost its last epoch and counts as interrupted.
    with st.writing(cut / "optlab.duckdb") as con:
        (run_id,) = con.execute("select run_id from run_state order by run_id limit 1").fetchone()
        con.execute("delete from epochs where run_id = ? and epoch = 2", [run_id])
        con.execute("update run_state set status = 'interrupted' where run_id = ?", [run_id])
    merged = optlab("merge", str(finished / "optlab.duckdb"), cwd=cut, check=True)
    assert "0 new runs, 1 replaced by a further copy, 7 kept as they were here" in merged.stdout
    got = rows(
        cut,
        f"select status, count(*) as n from runs r join epochs e using (run_id) "
        f"where run_id = '{run_id}' group by all",
    )
    assert got == [{"status": "done", "n": 2}]


def test_a_study_from_another_file_keeps_this_version_and_its_runs_wait(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, lrs in ((a, "[0.01]"), (b, "[0.3]")):
        folder.mkdir()
        write_study(folder, lrs)
        optlab("run", "tiny.toml", cwd=folder, check=True)
    merged = optlab("merge", str(b / "optlab.duckdb"), cwd=a, check=True)
    assert "tiny from another study file there: this store's version kept" in merged.stdout
    assert rows(a, "select count(*) as n from runs where study = 'tiny'") == [{"n": 4}]
    assert rows(a, "select count(*) as n from run_state") == [{"n": 8}]
    # Run with a file that has both LRs: b's runs are found done.
    write_study(a, "[0.01, 0.3]")
    again = optlab("run", "tiny.toml", cwd=a, check=True)
    assert "Nothing to run" in again.stdout


def test_one_id_with_two_configs_is_a_conflict_and_nothing_is_merged(tmp_path, finished):
    from optlab.store import core as st

    a, b = (copy_of(finished, tmp_path / name) for name in ("a", "b"))
    with st.writing(b / "optlab.duckdb") as con:
        (run_id,) = con.execute("select min(run_id) from run_state").fetchone()
        con.execute("update run_state set config = '{}' where run_id = ?", [run_id])
    before = rows(a, "select count(*) as n from epochs")
    result = optlab("merge", str(b / "optlab.duckdb"), cwd=a)
    assert (result.returncode, result.stderr) == (
        1,
        (
            f"Error: {b / 'optlab.duckdb'}: run {run_id} has another config there than here (one "
            "id, two configs: the stores were made by incompatible optlab versions); nothing "
            "merged\n"
        ),
    )
    assert rows(a, "select count(*) as n from epochs") == before


def test_merge_errors_are_one_line(tmp_path, finished):
    result = optlab("merge", "nope.duckdb", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "Error: nope.duckdb: no such store file\n")
    here = copy_of(finished, tmp_path / "here")
    result = optlab("merge", "optlab.duckdb", cwd=here)
    assert result.stderr == "Error: optlab.duckdb: is this store itself (--store optlab.duckdb)\n"
