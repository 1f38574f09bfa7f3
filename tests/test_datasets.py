"""Dataset loaders on small files laid out like the real downloads; subsets, splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optlab.plugins.registry import builtin_registry
from tests import fake_data
from tests.test_validation import BASE

REG = builtin_registry()


def load(name, data_dir, **params):
    return REG.create("dataset", name, params, data_dir=str(data_dir))


def test_cifar10_from_its_pickled_batches(tmp_path):
    fake_data.make_cifar10(tmp_path, per_batch=20)
    data = load("cifar10", tmp_path)
    assert data.x_train.shape == (100, 3, 32, 32) and data.x_test.shape == (20, 3, 32, 32)
    assert data.num_classes == 10
    raw = fake_data.pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    red = raw[b"data"][0][0] / 255.0
    assert float(data.x_train[0, 0, 0, 0]) == pytest.approx((red - 0.4914) / 0.2470, rel=1e-5)


def test_cifar100_uses_the_seed_constants_and_fine_labels(tmp_path):
    fake_data.make_cifar100(tmp_path)
    data = load("cifar100", tmp_path)
    assert data.num_classes == 100 and int(data.y_train.max()) == 99
    raw = fake_data.pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())
    blue = raw[b"data"][3][2048] / 255.0
    assert float(data.x_train[3, 2, 0, 0]) == pytest.approx((blue - 0.4408) / 0.2761, rel=1e-5)


def test_custom_normalisation_constants(tmp_path):
    fake_data.make_cifar10(tmp_path)
    data = load("cifar10", tmp_path, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert float(data.x_train.min()) >= -1.0 and float(data.x_train.max()) <= 1.0


@pytest.mark.parametrize("size", [28, 64])
def test_medmnist_files_by_size(tmp_path, size):
    fake_data.make_medmnist(tmp_path, "pathmnist", size=size)
    data = load("pathmnist", tmp_path, size=size)
    assert data.x_train.shape == (60, 3, size, size) and data.num_classes == 9
    grey = fake_data.make_medmnist(tmp_path, "organamnist")
    assert grey.name == "organamnist.npz"
    assert load("organamnist", tmp_path).x_train.shape == (60, 1, 28, 28)


def test_examples_per_class_is_stratified_and_deterministic_by_data_seed(tmp_path):
    fake_data.make_cifar10(tmp_path, per_batch=40)  # 20 per class
    a = load("cifar10", tmp_path, examples_per_class=5)
    b = load("cifar10", tmp_path, examples_per_class=5)
    c = load("cifar10", tmp_path, examples_per_class=5, data_seed=1)
    assert torch.bincount(a.y_train).tolist() == [5] * 10
    assert torch.equal(a.x_train, b.x_train)
    assert not torch.equal(a.x_train, c.x_train)


def test_validation_split_is_held_out_of_training(tmp_path):
    fake_data.make_cifar10(tmp_path, per_batch=40)
    data = load("cifar10", tmp_path, val_fraction=0.25)
    assert len(data.x_train) == 150 and len(data.x_val) == 50
    assert torch.bincount(data.y_val).tolist() == [5] * 10
    train_rows = {tuple(r) for r in data.x_train.flatten(1)[:, :8].tolist()}
    assert not any(tuple(r) in train_rows for r in data.x_val.flatten(1)[:, :8].tolist())


@pytest.mark.parametrize(
    "layout,shape",
    [("nhwc", (3, 8, 8)), ("nchw", (3, 8, 8)), ("flat", (12,)), ("sequence", (5, 6))],
)
def test_arrays_layouts(tmp_path, layout, shape):
    path = fake_data.make_arrays(tmp_path / "a.npz", layout)
    data = load("arrays", tmp_path, path=str(path))
    assert tuple(data.x_train.shape[1:]) == shape and data.num_classes == 4
    assert abs(float(data.x_train.mean())) < 0.2  # standardised


def test_engine_reports_validation_metrics(tmp_path):
    from optlab.training.engine import DataCache, train

    events = []
    cfg = {
        "epochs": 1,
        "precision": "fp32",
        "dataset": {
            "name": "synthetic",
            "shape": [4],
            "train_size": 40,
            "test_size": 10,
            "val_fraction": 0.25,
        },
        "model": {"name": "mlp", "hidden": []},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "lr_schedule": {"name": "constant"},
        "batch_schedule": {"name": "constant"},
        "augmentation": {"name": "none"},
    }
    train(
        {"run_id": "r", "seed": 0, "config": cfg},
        events.append,
        DataCache(REG, torch.device("cpu")),
    )
    row = events[1]
    assert 0 <= row["val_acc"] <= 1 and row["val_loss"] > 0
    assert 25 <= row["sfo"] <= 35 and row["sfo"] < 40  # the held-out quarter is not trained on


def study(tmp_path, table):
    (tmp_path / "s.toml").write_text(BASE.replace('{ name = "synthetic" }', table))
    return "s.toml"


def test_a_dataset_absent_offline_is_one_line_before_any_run(cli, tmp_path):
    result = cli("run", study(tmp_path, '{ name = "cifar10", download = false }'))
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: s.toml: dataset cifar10: not found in data/cifar-10-batches-py (download = "
        "false); download cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/"
        "cifar-10-python.tar.gz) and extract it into data, or point --data-dir (OPTLAB_DATA) "
        "at a folder that has it\n"
    )
    assert not (tmp_path / "optlab.duckdb").exists()


def test_a_failed_download_says_where_and_how(cli, tmp_path):
    result = cli("run", study(tmp_path, '{ name = "pathmnist" }'), "--data-dir", "nowhere")
    assert result.exit_code == 1
    line = result.stderr
    assert line.count("\n") == 1
    assert line.startswith(
        "Error: s.toml: dataset pathmnist: not found at nowhere/medmnist/pathmnist.npz"
    )
    assert "download pathmnist.npz (" in line and "into nowhere/medmnist" in line


def test_too_many_examples_per_class(cli, tmp_path):
    result = cli("show", study(tmp_path, '{ name = "cifar100", examples_per_class = 501 }'))
    assert result.stderr == (
        "Error: s.toml: base: dataset: examples_per_class = 501, but the "
        "smallest class of cifar100's training set has 500\n"
    )


def test_digits_is_loaded_to_check_a_study_only_when_it_asks_for_examples_per_class(
    cli, tmp_path, monkeypatch
):
    """`optlab show` (and every `optlab run` start) of a digits study does not load the
    digits (scikit-learn's import is most of a second) unless examples_per_class needs the
    smallest class's size, which is then checked."""
    from optlab.plugins.builtins import datasets

    def loading(*_):
        raise AssertionError("the digits were loaded")

    datasets._digits_smallest_class.cache_clear()
    real = datasets.digits_arrays
    monkeypatch.setattr(datasets, "digits_arrays", loading)
    result = cli("show", study(tmp_path, '{ name = "digits" }'))
    assert result.exit_code == 0 and "1 runs, 0 done" in result.stdout, result.stderr
    monkeypatch.setattr(datasets, "digits_arrays", real)
    result = cli("show", study(tmp_path, '{ name = "digits", examples_per_class = 200 }'))
    assert result.stderr == (
        "Error: s.toml: base: dataset: examples_per_class = 200, but the "
        "smallest class of digits's training set has 131\n"
    )


@pytest.mark.parametrize(
    "arrays,message",
    [
        (
            {"x_train": np.zeros((4, 2)), "y_train": np.zeros(4)},
            "missing x_test, y_test; an arrays file needs x_train, y_train, x_test, y_test (it has "
            "x_train, y_train)",
        ),
        (
            {
                "x_train": np.zeros((4, 2)),
                "y_train": np.zeros(3),
                "x_test": np.zeros((2, 2)),
                "y_test": np.zeros(2),
            },
            "x_train has 4 rows but y_train has 3",
        ),
    ],
)
def test_bad_arrays_files(cli, tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    result = cli("show", study(tmp_path, '{ name = "arrays", path = "bad.npz" }'))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: s.toml: base: dataset: {tmp_path / 'bad.npz'}: {message}\n")


def test_arrays_vectors_use_a_given_mean_and_std(tmp_path):
    path = fake_data.make_arrays(tmp_path / "a.npz", "flat")
    raw = load("arrays", tmp_path, path=str(path), normalize=False)
    one = load("arrays", tmp_path, path=str(path), mean=[1.0], std=[2.0])
    assert torch.allclose(one.x_train, (raw.x_train - 1.0) / 2.0)
    per = [float(i) for i in range(12)]
    each = load("arrays", tmp_path, path=str(path), mean=per, std=[1.0] * 12)
    assert torch.allclose(each.x_test, raw.x_test - torch.tensor(per))


@pytest.mark.parametrize(
    "table,message",
    [
        (
            "mean = [0.0, 1.0], std = [1.0, 1.0]",
            "mean has 2 values; {p} holds vectors of 12 "
            "features: give 1 value (for all) or 12 (one per feature)",
        ),
        ("mean = [0.0]", "give mean and std together (or neither)"),
    ],
)
def test_arrays_vectors_refuse_a_mean_that_does_not_fit(cli, tmp_path, table, message):
    fake_data.make_arrays(tmp_path / "a.npz", "flat")
    result = cli("show", study(tmp_path, f'{{ name = "arrays", path = "a.npz", {table} }}'))
    assert result.exit_code == 1
    assert result.stderr == (f"Error: s.toml: base: dataset: {message.format(p='a.npz')}\n")


@pytest.mark.slow  # real worker processes
def test_arrays_path_is_relative_to_the_study_file_and_ids_do_not_depend_on_it(tmp_path):
    import json

    from tests.conftest import optlab

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    fake_data.make_arrays(project / "data" / "a.npz", "flat")
    (project / "s.toml").write_text("""
name = "rel"
[base]
epochs = 1
dataset = { name = "arrays", path = "data/a.npz" }
model = { name = "mlp", hidden = [8] }
optimizer = { name = "sgd", lr = 0.1 }
batch_schedule = { name = "constant", batch_size = 8 }
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # From another folder: the file is found beside the study, and training reads it too.
    proc = optlab("run", str(project / "s.toml"), "--workers", "1", cwd=elsewhere, check=True)
    assert "1 done" in proc.stdout
    ids = {
        json.loads(line)["run_id"]
        for cwd, target in ((elsewhere, project / "s.toml"), (project, "s.toml"))
        for line in optlab(
            "show", str(target), "--format", "json", cwd=cwd, check=True
        ).stdout.splitlines()
    }
    assert len(ids) == 1  # the config keeps "data/a.npz": the same id from anywhere
    (project / "data" / "a.npz").unlink()
    result = optlab("show", str(project / "s.toml"), cwd=elsewhere)
    assert result.returncode == 1 and result.stderr == (
        f"Error: {project / 's.toml'}: base: dataset: no such file: data/a.npz (looked for "
        f"{project / 'data' / 'a.npz'}: relative to the study file)\n"
    )


@pytest.mark.slow  # real worker processes
def test_the_data_folder_reaches_the_workers_with_each_run_not_through_the_environment(
    tmp_path,
):
    import os

    import optlab

    fake_data.make_cifar10(tmp_path / "mine", per_batch=20)
    config = {
        "dataset": {"name": "cifar10"},
        "model": {"name": "mlp", "hidden": [8]},
        "epochs": 1,
        "batch_schedule": {"name": "constant", "batch_size": 50},
    }
    store = tmp_path / "s.duckdb"
    trained = optlab.train(config, store=store, data_dir=tmp_path / "mine")
    assert trained.status == "done", trained.summary
    assert "OPTLAB_DATA" not in os.environ  # nothing left for a later call in this process
    # The worker read the files there: its one epoch saw CIFAR's 100 training images.
    assert list(trained.epochs["samples"]) == [100]
