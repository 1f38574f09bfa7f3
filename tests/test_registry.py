"""Every registered plugin, built-in or installed, gets a tiny CPU test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optlab.plugins.plugin import NoParams, Plugin
from optlab.plugins.registry import GROUPS, Registry, builtin_registry

REG = builtin_registry()
PLUGINS = [(kind, name) for kind in GROUPS for name in REG.names(kind)]
SMALL = {  # small settings for plugins whose defaults are large
    ("dataset", "synthetic"): {"shape": [1, 4, 4], "train_size": 16, "test_size": 8},
    ("model", "resnet18"): {"width": 4},
    ("model", "wrn"): {"depth": 10, "width": 1},
}


def test_builtins_are_registered_through_entry_points():
    expected = {
        "dataset": {"digits", "synthetic"},
        "model": {"mlp", "cnn"},
        "optimizer": {"sgd", "adamw"},
        "lr_schedule": {"constant", "cosine"},
        "batch_schedule": {"constant"},
        "augmentation": {"none", "flip_crop"},
    }
    for kind, names in expected.items():
        assert names <= set(REG.names(kind))
        for name in names:
            assert REG.describe(kind, name).distribution == "optlab"


@pytest.fixture(scope="session")  # made once a worker, however its tests are spread
def data_dir(tmp_path_factory):
    from tests import fake_data

    root = tmp_path_factory.mktemp("data")
    fake_data.make_cifar10(root)
    fake_data.make_cifar100(root)
    for flag in fake_data.MEDMNIST_CLASSES:
        fake_data.make_medmnist(root, flag)
    fake_data.make_arrays(root / "arrays.npz")
    return root


@pytest.mark.parametrize("kind,name", PLUGINS)
def test_plugin_builds_and_works(kind, name, data_dir):
    info = REG.describe(kind, name)
    assert info.plugin.description and "\n" not in info.plugin.description
    params = SMALL.get((kind, name), {})
    if kind == "dataset":
        if name == "arrays":
            params = {"path": str(data_dir / "arrays.npz")}
        data = REG.create(kind, name, params, data_dir=str(data_dir))
        assert len(data.x_train) == len(data.y_train) > 0
        assert int(data.y_train.max()) < data.num_classes
    elif kind == "model":
        model = REG.create(kind, name, params, input_shape=(1, 8, 8), num_classes=3)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    elif kind == "optimizer":
        model = torch.nn.Linear(3, 1)
        before = model.weight.detach().clone()
        opt = REG.create(kind, name, params, model=model)
        x = torch.randn(4, 3)

        def closure(create_graph=False):
            opt.zero_grad()
            loss = model(x).pow(2).sum()
            loss.backward(create_graph=create_graph)
            return loss

        closure()
        opt.step(closure) if getattr(opt, "optlab_closure", False) else opt.step()
        assert not torch.equal(before, model.weight)
    elif kind == "lr_schedule":
        factor = REG.create(kind, name, params, epochs=5)
        assert all(0 <= factor(t / 2, 0.5, t) < 100 for t in range(10))
    elif kind == "batch_schedule":
        at = REG.create(kind, name, params, epochs=5, train_size=1000)
        assert all(at(e) >= 1 for e in range(5))
    elif kind == "augmentation":
        aug = REG.create(kind, name, params, input_shape=(3, 8, 8))
        assert aug(torch.randn(4, 3, 8, 8), torch.Generator()).shape == (4, 3, 8, 8)
    elif kind == "executor" and name == "local":
        executor = REG.create(kind, name, params, store=Path("optlab.duckdb"))
        slots = executor.make_slots("none", 1, 2, None)
        assert [(s.label, s.gpu) for s in slots] == [("cpu/0", None), ("cpu/1", None)]
    elif kind == "executor" and name == "slurm":  # tests/test_slurm.py submits its jobs
        executor = REG.create(kind, name, params, store=Path("optlab.duckdb"))
        assert executor.submits and len(executor.make_slots("0-3", 2, None, None)) == 1
    elif kind == "executor":  # tests/test_ray.py runs it on real clusters
        assert info.plugin.params(address="auto").address == "auto"


def test_unknown_name_lists_the_registered_and_the_closest():
    reg = Registry({"optimizer": {"sgd": Plugin("x"), "adamw": Plugin("y")}})
    with pytest.raises(
        Exception,
        match=r"unknown optimizer 'adamm'; did you mean 'adamw'\? "
        r"Registered: adamw, sgd",
    ):
        reg.get("optimizer", "adamm")


def test_a_hermetic_registry_sees_only_what_it_is_given():
    plugin = Plugin("only one", NoParams, lambda params: "built")
    reg = Registry({"probe": {"p": plugin}})
    assert reg.names("probe") == ["p"] and reg.names("optimizer") == []
    assert reg.create("probe", "p", {}) == "built"


def test_digits_split_is_stratified_and_normalised():
    data = REG.create("dataset", "digits", {})
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert abs(float(data.x_train.mean())) < 1e-4
    assert abs(float(data.x_train.std()) - 1) < 1e-2
    assert torch.bincount(data.y_test).min() >= 40


def test_mlp_without_hidden_layers_is_logistic_regression():
    model = REG.create("model", "mlp", {"hidden": []}, input_shape=(5,), num_classes=2)
    assert sum(p.numel() for p in model.parameters()) == 5 * 2 + 2


def test_cnn_rejects_flat_input_with_a_clear_message():
    with pytest.raises(
        ValueError,
        match=r"cnn needs image input \(C, H, W\); this dataset "
        r"gives \(5,\)",
    ):
        REG.create("model", "cnn", {}, input_shape=(5,), num_classes=2)


@pytest.mark.parametrize(
    "name,params,classes,count",
    [
        ("resnet18", {}, 10, 11_173_962),  # the seeds' "11.2M parameters"
        ("resnet18", {}, 100, 11_220_132),
        ("wrn", {"depth": 28, "width": 10}, 100, 36_536_884),  # WRN-28-10, seed 004
    ],
)
def test_published_model_sizes(name, params, classes, count):
    model = REG.create("model", name, params, input_shape=(3, 32, 32), num_classes=classes)
    assert sum(p.numel() for p in model.parameters()) == count


def test_wide_resnet_depth_must_be_6n_plus_4(cli, tmp_path):
    from tests.test_validation import BASE

    (tmp_path / "s.toml").write_text(
        BASE.replace('{ name = "mlp" }', '{ name = "wrn", depth = 27 }')
    )
    result = cli("show", "s.toml")
    assert result.stderr == (
        "Error: s.toml: base: model: depth 27: a wide ResNet "
        "has depth 6n + 4 (16, 22, 28, 40, ...) (given {'depth': 27})\n"
    )
