"""Every study in studies/ runs for one epoch on tiny synthetic stand-in data (--set), in
real worker processes."""

from __future__ import annotations

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


@pytest.mark.parametrize("study", sorted(p.name for p in (ROOT / "studies").glob("*.toml")))
def test_study_runs_one_epoch_on_stand_in_data(tmp_path, study):
    proc = optlab(
        "run", str(ROOT / "studies" / study), *STANDIN, "--workers", "2", cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.splitlines()[-1]
    assert " done" in last and "failed" not in last, last
    rows = optlab(
        "query",
        "select count(*) as n, min(epoch) as e from epochs",
        "--format",
        "csv",
        cwd=tmp_path,
    ).stdout.splitlines()
    assert rows[0] == "n,e" and rows[1].endswith(",1")
