"""Every study in studies/ runs for one epoch on tiny synthetic stand-in data (--set), in
real worker processes: all of them in one `optlab run A.toml B.toml ...` (one pool, as a
user runs several studies together), each checked in the store it shares."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from tests.conftest import ROOT, optlab

pytestmark = pytest.mark.slow

STANDIN = [
    "--set",
    "epochs=1",
    "--set",
    "seeds=[0]",
    "--set",
    'dataset={name="synthetic", classes=4, shape=[3, 8, 8], train_size=48, test_size=16, '
    "val_fraction=0.25}",
    "--set",
    'model={name="cnn", channels=[4]}',
    # The studies' own probe schedules reach past one epoch; these run in every study.
    "--set",
    'probes=[{name="grad_norm", epochs=[0, 1]}, {name="full_grad_norm"}]',
]
STUDIES = sorted(p.name for p in (ROOT / "studies").glob("*.toml"))


@pytest.fixture(scope="session")  # made once a worker, however its tests are spread
def ran(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("studies")
    files = [str(ROOT / "studies" / s) for s in STUDIES]
    proc = optlab("run", *files, *STANDIN, "--workers", "2", cwd=folder, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, proc.stdout


@pytest.mark.parametrize("study", STUDIES)
def test_study_runs_one_epoch_on_stand_in_data(ran, study):
    folder, stdout = ran
    last = stdout.splitlines()[-1]
    assert " done" in last and "failed" not in last, last
    name = next(
        line.split('"')[1]
        for line in (ROOT / "studies" / study).read_text().splitlines()
        if line.startswith("name")
    )
    con = duckdb.connect(str(folder / "optlab.duckdb"), read_only=True)
    try:
        runs, done, epochs, first = con.execute(
            "select count(*), count(*) filter (status = 'done'), "
            "(select count(*) from epochs e join runs q using (run_id) where q.study = $1), "
            "(select min(epoch) from epochs e join runs q using (run_id) where q.study = $1) "
            "from runs where study = $1",
            [name],
        ).fetchone()
    finally:
        con.close()
    assert runs > 0 and done == runs and epochs == runs and first == 1, (runs, done, epochs)
