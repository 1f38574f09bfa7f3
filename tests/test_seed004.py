"""Seed 004 as its authors ran it: a real (tiny) run exported in the reference's four CSV
files, with its columns, units and one lr_bs row per step; and both SFO counts."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tests.conftest import optlab, write_study

pytestmark = pytest.mark.slow  # real worker processes

STUDY = """
name = "growth"
seeds = [0]
[base]
epochs = 4
dataset = { name = "synthetic", classes = 3, shape = [3, 8, 8], train_size = 100, test_size = 30 }
model = { name = "mlp", hidden = [16] }
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }
lr_scaling = "linear"
lr_schedule = { name = "cosine", warmup_epochs = 1 }
augmentation = { name = "flip_crop", pad = 1 }
probes = [{ name = "full_grad_norm", every = 1, augment = true }]
[base.batch_schedule]
name = "exp_growth"
batch_size = 8
incr_interval = 1
rate = 2.0
max_batch_size = 32
"""


@pytest.fixture(scope="session")  # made once a worker, however its tests are spread
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s4")
    write_study(folder, text=STUDY, name="growth.toml")
    optlab("run", "growth.toml", "--workers", "1", cwd=folder, check=True)
    optlab("export", "--format", "seed004", "--to", "out", cwd=folder, check=True)
    rows = json.loads(
        optlab(
            "query",
            "select * from epochs order by epoch",
            "--format",
            "json",
            cwd=folder,
            check=True,
        ).stdout
    )
    tables = {}
    for name in ("train", "test", "norm", "lr_bs"):
        with (folder / "out" / "main" / "run1" / f"{name}.csv").open() as f:
            tables[name] = list(csv.reader(f))
    return rows, tables


def test_the_four_files_have_the_reference_columns(exported):
    _, tables = exported
    assert tables["train"][0] == ["Epoch", "Steps", "Train Loss", "Train Accuracy", "Learning Rate"]
    assert tables["test"][0] == ["Epoch", "Steps", "Test Loss", "Test Accuracy"]
    assert tables["norm"][0] == ["Epoch", "Steps", "Full Gradient Norm"]
    assert tables["lr_bs"][0] == ["Epoch", "Steps", "Learning Rate", "Batch Size"]


def test_accuracies_are_percent_and_rows_are_epochs(exported):
    rows, tables = exported
    train, test = tables["train"][1:], tables["test"][1:]
    assert [int(r[0]) for r in train] == [1, 2, 3, 4]
    for e, t, s in zip(rows, train, test, strict=True):
        assert int(t[1]) == int(s[1]) == e["step"]
        assert float(t[3]) == pytest.approx(100 * e["train_acc"])
        assert float(s[3]) == pytest.approx(100 * e["test_acc"])
        assert float(t[4]) == pytest.approx(e["epoch_lr"])
    assert [int(r[0]) for r in tables["norm"][1:]] == [1, 2, 3, 4]


def test_lr_bs_has_one_row_per_step_with_the_lr_the_engine_used(exported):
    rows, tables = exported
    steps = tables["lr_bs"][1:]
    # Batch 8, 16, 32, 32 (capped) on 100 examples: 13 + 7 + 4 + 4 steps.
    assert len(steps) == rows[-1]["step"] == 28
    assert [int(s[1]) for s in steps] == list(range(1, 29))
    assert [int(s[3]) for s in steps] == [8] * 13 + [16] * 7 + [32] * 8
    by_epoch = {}
    for s in steps:
        by_epoch.setdefault(int(s[0]), []).append(float(s[2]))
    # The engine reports the LR of each epoch's last step: the rebuilt schedule agrees.
    assert [by_epoch[e["epoch"]][-1] for e in rows] == pytest.approx(
        [e["epoch_lr"] for e in rows], rel=1e-12
    )
    # Warmup over the first epoch, then cosine: the LR rises, then falls.
    first = by_epoch[1]
    assert first == sorted(first) and by_epoch[4] == sorted(by_epoch[4], reverse=True)


def test_sfo_counts_samples_and_sfo_full_batches_counts_whole_batches(exported):
    rows, _ = exported
    assert [e["sfo"] for e in rows] == [100, 200, 300, 400]
    # The last batch of each epoch is partial (100 = 12 * 8 + 4, 6 * 16 + 4, 3 * 32 + 4).
    assert [e["sfo_full_batches"] for e in rows] == [104, 216, 344, 472]
    assert all(math.isfinite(float(r[2])) for r in exported[1]["norm"][1:])
