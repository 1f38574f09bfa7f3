"""The training engine, in-process on the CPU."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from optlab.plugins.registry import default_registry
from optlab.training.engine import DataCache, evaluate, train


def config(**over):
    cfg = {
        "epochs": 3,
        "precision": "fp32",
        "dataset": {
            "name": "synthetic",
            "classes": 3,
            "shape": [1, 4, 4],
            "train_size": 50,
            "test_size": 20,
            "noise": 1.0,
            "seed": 0,
        },
        "model": {"name": "mlp", "hidden": [8]},
        "optimizer": {
            "name": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 0.0,
        },
        "lr_schedule": {"name": "constant", "warmup_epochs": 0.0},
        "batch_schedule": {"name": "constant", "batch_size": 16},
        "augmentation": {"name": "none"},
    }
    cfg.update(over)
    return cfg


def with_optimizers(**optimizers):
    """A hermetic registry: the built-ins `config()` names, and these optimizers."""
    from optlab.plugins.registry import Registry

    base = default_registry()
    kinds = (
        ("dataset", "synthetic"),
        ("model", "mlp"),
        ("lr_schedule", "constant"),
        ("batch_schedule", "constant"),
        ("augmentation", "none"),
    )
    plugins = {kind: {name: base.get(kind, name)} for kind, name in kinds}
    return Registry({**plugins, "optimizer": optimizers})


def run(cfg, seed=0):
    events = []
    cache = DataCache(default_registry(), torch.device("cpu"))
    train({"run_id": "r", "seed": seed, "config": cfg}, events.append, cache)
    return events


def test_epoch_rows_carry_the_fields_and_count_the_partial_batch():
    events = run(config())
    rows = [e for e in events if e["type"] == "epoch"]
    assert [e["type"] for e in events] == ["started", "epoch", "epoch", "epoch", "finished"]
    # 50 samples in batches of 16: 4 steps (16, 16, 16, 2); the SFO counts the 2 as 2.
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert [r["sfo"] for r in rows] == [50, 100, 150]
    assert [r["samples"] for r in rows] == [50, 100, 150]
    assert {r["epoch_batch_size"] for r in rows} == {16}
    assert all(0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in rows)
    assert all(r["seconds"] > 0 and r["eval_seconds"] >= 0 for r in rows)


def test_same_seed_same_numbers_other_seed_other_numbers():
    a, b, c = run(config()), run(config()), run(config(), seed=1)
    losses = [[e["train_loss"] for e in ev if e["type"] == "epoch"] for ev in (a, b, c)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


def test_divergence_is_reported_not_failed():
    events = run(
        config(
            optimizer={
                "name": "sgd",
                "lr": 1e12,
                "momentum": 0.9,
                "nesterov": False,
                "weight_decay": 0.0,
            }
        )
    )
    assert events[-1]["type"] == "diverged"
    assert "training loss became" in events[-1]["error"]


def test_cosine_with_warmup_sets_the_lr_per_step():
    cfg = config(epochs=4, lr_schedule={"name": "cosine", "warmup_epochs": 1.0, "min_factor": 0.0})
    rows = [e for e in run(cfg) if e["type"] == "epoch"]
    lrs = [r["epoch_lr"] for r in rows]
    assert lrs[0] == pytest.approx(0.1)  # the step that ends the warmup runs at the full rate
    assert lrs[1] > lrs[2] > lrs[3] >= 0


def test_lr_schedule_factors():
    reg = default_registry()
    cosine = reg.create("lr_schedule", "cosine", {"warmup_epochs": 2}, epochs=10)
    assert cosine(0.0, 0.5, 0) == pytest.approx(0.25)
    assert cosine(1.5, 0.5, 3) == pytest.approx(1.0)
    assert cosine(6.0, 0.5, 12) == pytest.approx(0.5)
    constant = reg.create("lr_schedule", "constant", {}, epochs=10)
    assert constant(3.0, 0.1, 30) == 1.0


def test_flip_crop_keeps_shape_and_is_reproducible():
    aug = default_registry().create("augmentation", "flip_crop", {"pad": 2}, input_shape=(3, 8, 8))
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    # a crop is a shifted window: every kept value comes from the original image or padding
    assert set(a.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_flip_crop_with_nothing_to_do_is_identity():
    aug = default_registry().create(
        "augmentation", "flip_crop", {"pad": 0, "flip": False}, input_shape=(1, 4, 4)
    )
    x = torch.randn(5, 1, 4, 4)
    assert torch.equal(aug(x, torch.Generator()), x)


def test_precision_falls_back_with_a_warning_on_cpu():
    with pytest.warns(UserWarning, match="precision 'amp' cannot run on cpu; using fp32"):
        events = run(config(precision="amp", epochs=1))
    assert events[0]["precision_used"] == "fp32"
    assert events[-1]["type"] == "finished"


def test_bf16_runs_on_cpu():
    events = run(config(precision="bf16", epochs=1))
    assert events[0]["precision_used"] == "bf16"
    assert math.isfinite(events[1]["train_loss"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "amp"])
def test_cuda_paths(precision):
    cfg = config(
        precision=precision,
        model={"name": "cnn", "channels": [8], "batch_norm": True},
        augmentation={"name": "flip_crop", "pad": 1, "flip": True},
        dataset={
            "name": "synthetic",
            "classes": 3,
            "shape": [3, 8, 8],
            "train_size": 64,
            "test_size": 16,
            "noise": 1.0,
            "seed": 0,
        },
    )
    events = []
    cache = DataCache(default_registry(), torch.device("cuda"))
    train({"run_id": "r", "seed": 0, "config": cfg}, events.append, cache)
    assert events[0]["precision_used"] == precision
    assert events[-1]["type"] == "finished"


def test_a_loss_that_explodes_but_stays_finite_is_diverged_by_the_relative_rule():
    ds = {
        "name": "synthetic",
        "classes": 3,
        "shape": [1, 4, 4],
        "train_size": 50,
        "test_size": 20,
        "noise": 20.0,
        "seed": 0,
    }
    base = config(
        epochs=8,
        dataset=ds,
        model={"name": "mlp", "hidden": [16]},
        optimizer={
            "name": "sgd",
            "lr": 1.0,
            "momentum": 0.99,
            "nesterov": False,
            "weight_decay": 0.0,
        },
    )
    events = run({**base, "divergence": {"loss_factor": 100.0}})
    rows = [e for e in events if e["type"] == "epoch"]
    assert len(rows) == 2 and math.isfinite(rows[-1]["train_loss"])
    assert rows[-1]["train_loss"] > 100 * rows[0]["train_loss"]
    assert events[-1]["type"] == "diverged" and events[-1]["rule"] == "loss_factor"
    assert events[-1]["error"] == (
        "training loss 2.891e+10 is above 100 x the first epoch's (6588) in epoch 2"
    )
    # Without the relative rule the same run goes on until the loss is no longer a number.
    off = run({**base, "divergence": None})
    assert off[-1]["type"] == "diverged" and off[-1]["rule"] == "non_finite"
    assert len([e for e in off if e["type"] == "epoch"]) == 6


def test_the_default_divergence_rule_and_that_it_is_not_part_of_a_run_id():
    from optlab.study.expand import run_id_for
    from optlab.study.schema import RunSettings

    assert RunSettings(epochs=1).divergence.loss_factor == 100.0
    assert RunSettings(epochs=1, divergence=False).divergence is None
    cfg = config()
    assert run_id_for({**cfg, "divergence": {"loss_factor": 10.0}}, 0) == run_id_for(cfg, 0)


def test_sam_counts_two_gradient_evaluations_a_step_in_the_sfo():
    rows = [
        e
        for e in run(config(optimizer={"name": "sam", "rho": 0.05, "lr": 0.1}))
        if e["type"] == "epoch"
    ]
    # 50 samples, batches of 16: 4 steps a epoch, each evaluated twice
    assert [r["sfo"] for r in rows] == [100, 200, 300]
    assert [r["samples"] for r in rows] == [50, 100, 150]
    assert [r["sfo_full_batches"] for r in rows] == [128, 256, 384]
    assert all(math.isfinite(r["train_loss"]) for r in rows)


def test_evaluation_uses_the_weights_the_optimizer_names_for_it():
    """An optimizer whose eval() zeroes the model (and train() puts the weights back): every
    evaluation sees zeros, so uniform predictions (loss ln 3); training is unaffected."""
    from optlab.plugins.builtins.optimizers import SGDParams
    from optlab.plugins.plugin import Plugin

    class Zeroing(torch.optim.SGD):
        def eval(self):
            if not hasattr(self, "kept"):
                self.kept = [p.detach().clone() for g in self.param_groups for p in g["params"]]
                for g in self.param_groups:
                    for p in g["params"]:
                        p.data.zero_()

        def train(self):
            if hasattr(self, "kept"):
                params = [p for g in self.param_groups for p in g["params"]]
                for p, k in zip(params, self.kept, strict=True):
                    p.data.copy_(k)
                del self.kept

    def build(params, *, model, **_):
        return Zeroing(model.parameters(), lr=params.lr, momentum=params.momentum)

    registry = with_optimizers(
        zeroing=Plugin("test", SGDParams, build), sgd=default_registry().get("optimizer", "sgd")
    )

    def rows(name):
        events = []
        cfg = config(optimizer={"name": name, "lr": 0.1, "momentum": 0.9})
        train(
            {"run_id": "r", "seed": 0, "config": cfg},
            events.append,
            DataCache(registry, torch.device("cpu")),
            registry=registry,
        )
        return [e for e in events if e["type"] == "epoch"]

    zeroed, plain = rows("zeroing"), rows("sgd")
    assert [r["test_loss"] for r in zeroed] == pytest.approx([math.log(3)] * 3, rel=1e-6)
    assert [r["train_loss"] for r in zeroed] == [r["train_loss"] for r in plain]
    assert all(r["test_loss"] != pytest.approx(math.log(3)) for r in plain)


def test_schedule_free_adamw_saves_and_reports_the_averaged_weights(tmp_path):
    from optlab.plugins.registry import default_registry as reg

    cfg = config(optimizer={"name": "schedulefree_adamw", "lr": 0.01}, save_weights="final")
    events = []
    train(
        {"run_id": "r", "seed": 0, "config": cfg, "checkpoint_dir": str(tmp_path)},
        events.append,
        DataCache(reg(), torch.device("cpu")),
    )
    last = [e for e in events if e["type"] == "epoch"][-1]
    model = reg().create("model", "mlp", {"hidden": [8]}, input_shape=(1, 4, 4), num_classes=3)
    model.load_state_dict(torch.load(tmp_path / "final.pt"))
    data = DataCache(reg(), torch.device("cpu")).get(cfg["dataset"])
    loss, _ = evaluate(model, data.x_test, data.y_test, contextlib.nullcontext)
    assert loss == pytest.approx(last["test_loss"], rel=1e-6)


def test_a_hessian_informed_plugin_gets_differentiable_gradients_from_the_engine(monkeypatch):
    from tests.conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "optlab-example" / "src"))
    from optlab_example import sophia

    registry = with_optimizers(sophia=sophia)
    events = []
    cfg = config(optimizer={"name": "sophia", "lr": 0.01, "every": 2})
    train(
        {"run_id": "r", "seed": 0, "config": cfg},
        events.append,
        DataCache(registry, torch.device("cpu")),
        registry=registry,
    )
    rows = [e for e in events if e["type"] == "epoch"]
    assert events[-1]["type"] == "finished"
    # 4 steps an epoch (16, 16, 16, 2); a Hessian step (one more evaluation) every 2nd, on
    # a batch of 16 each time: 50 + 32 examples' gradients an epoch
    assert [r["sfo"] for r in rows] == [82, 164, 246]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_a_plugin_whose_build_raises_is_named_and_marked_for_the_executor():
    from optlab.plugins.builtins.optimizers import SGDParams
    from optlab.plugins.plugin import Plugin
    from optlab.training.engine import PluginBuildError
    from optlab.training.worker import _failed

    def build(params, **_):
        raise ValueError("nope\nmore detail")

    registry = with_optimizers(boom=Plugin("raises", SGDParams, build))
    cfg = config(optimizer={"name": "boom", "lr": 0.1})
    with pytest.raises(PluginBuildError) as caught:
        train(
            {"run_id": "r", "seed": 0, "config": cfg},
            [].append,
            DataCache(registry, torch.device("cpu")),
            registry=registry,
        )
    events = []
    _failed(events.append, {"run_id": "r"}, caught.value)
    assert events == [
        {
            "type": "failed",
            "run_id": "r",
            "error": "PluginBuildError: optimizer plugin 'boom' failed to build: ValueError: nope",
            "broken": {"kind": "optimizer", "table": {"name": "boom", "lr": 0.1}},
        }
    ]
