"""LR and batch-size schedules, LR scaling with the batch size, and load-time checks."""

from __future__ import annotations

import pytest

from optlab.plugins.registry import builtin_registry, default_registry
from optlab.study.steps import lr_scale
from tests.test_validation import BASE

REG = builtin_registry()


def lr(name, epochs=10, **params):
    return REG.create("lr_schedule", name, params, epochs=epochs)


def bs(name, **params):
    return REG.create("batch_schedule", name, params, epochs=10, train_size=10_000)


@pytest.mark.parametrize(
    "name,params,at,expected",
    [
        ("step", {"step_size": 3, "gamma": 0.5}, [0, 2.9, 3, 6.5, 9], [1, 1, 0.5, 0.25, 0.125]),
        ("multistep", {"milestones": [2, 5], "gamma": 0.1}, [1.9, 2, 4.9, 5], [1, 0.1, 0.1, 0.01]),
        ("linear", {"end_factor": 0.0}, [0, 5, 10], [1, 0.5, 0]),
        ("poly", {"power": 2.0}, [0, 5, 10], [1, 0.25, 0]),
        ("cosine", {"min_factor": 0.2}, [0, 5, 10], [1, 0.6, 0.2]),
        ("linear_growth", {"incr_interval": 4, "coefficient": 0.5}, [0, 3.9, 4, 8], [1, 1, 1.5, 2]),
        ("exp_growth", {"incr_interval": 4, "rate": 1.4}, [0, 4, 8.5], [1, 1.4, 1.96]),
    ],
)
def test_lr_schedule_shapes(name, params, at, expected):
    factor = lr(name, **params)
    assert [factor(t, 0.01, 0) for t in at] == pytest.approx(expected)


def test_warmup_in_epochs_then_decay_over_the_rest():
    factor = lr("linear", warmup_epochs=2)
    assert factor(0.0, 0.5, 0) == pytest.approx(0.25)
    assert factor(1.5, 0.5, 3) == pytest.approx(1.0)
    assert factor(6.0, 0.5, 12) == pytest.approx(0.5)  # halfway through epochs 2..10


def test_warmup_in_steps_multiplies_the_schedule():
    factor = lr("constant", warmup_steps=4)
    assert [factor(0.0, 0.1, s) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1, 1])


def test_seed_004_batch_growth():
    linear = bs("linear_growth", batch_size=16, incr_interval=20, coefficient=16)
    assert [linear(e) for e in (0, 19, 20, 40, 199)] == [16, 16, 32, 48, 160]
    exp = bs("exp_growth", batch_size=16, incr_interval=20, rate=2.0)
    assert [exp(e) for e in (0, 20, 199)] == [16, 32, 8192]
    capped = bs("exp_growth", batch_size=16, incr_interval=20, rate=2.0, max_batch_size=2048)
    assert [capped(e) for e in (0, 120, 139, 140, 160, 199)] == [16, 1024, 1024, 2048, 2048, 2048]
    assert bs("linear_growth", batch_size=16, coefficient=16, max_batch_size=40)(199) == 40
    listed = bs("list", sizes=[32, 64])
    assert [listed(e) for e in range(4)] == [32, 64, 64, 64]


def test_seed_004_study_caps_the_batch_at_2048_as_the_reference_does():
    from pathlib import Path

    from optlab.study.expand import all_runs, expand
    from optlab.study.schema import load_study

    study = load_study(Path(__file__).parents[1] / "studies" / "batch_growth.toml")
    for run in all_runs(expand(study)):
        table = run.config["batch_schedule"]
        schedule = bs(table["name"], **{k: v for k, v in table.items() if k != "name"})
        sizes = [schedule(e) for e in range(run.config["epochs"])]
        assert max(sizes) <= 2048, run.block
        if table["name"] == "exp_growth":  # 16 * 2^7 from epoch 141: 60 of 200 epochs
            assert sizes.count(2048) == 60 and sizes[140] == 2048 and sizes[139] == 1024


def test_lr_scaling_rules():
    assert lr_scale({"lr_scaling": "none"}, 512, 128) == 1.0
    assert lr_scale({"lr_scaling": "linear"}, 512, 128) == 4.0
    assert lr_scale({"lr_scaling": "sqrt"}, 512, 128) == 2.0


GROWTH = BASE.replace(
    'dataset = { name = "synthetic" }', 'dataset = { name = "synthetic", train_size = 1000 }'
)


@pytest.mark.parametrize(
    "table,message",
    [
        (
            'lr_schedule = { name = "exp_growth", incr_interval = 0 }',
            "base: lr_schedule.incr_interval: Input should be greater than or equal to 1 (given 0)",
        ),
        (
            'batch_schedule = { name = "exp_growth", batch_size = 16, incr_interval = 1, '
            "rate = 2.0 }",
            "base: batch_schedule: the batch grows to 1024 in epoch 7, past the 1000 training "
            "examples",
        ),
        (
            'lr_schedule = { name = "multistep", milestones = [5, 3] }',
            "base: lr_schedule: milestones must increase (given {'milestones': [5, 3]})",
        ),
        (
            'lr_schedule = { name = "constant", warmup_epochs = 1, warmup_steps = 10 }',
            "base: lr_schedule: give warmup_epochs or warmup_steps, not both (given "
            "{'warmup_epochs': 1, 'warmup_steps': 10})",
        ),
    ],
)
def test_schedules_that_cannot_work_are_rejected_at_load(cli, tmp_path, table, message):
    text = GROWTH.replace("epochs = 1", "epochs = 10") + table + "\n"
    (tmp_path / "s.toml").write_text(text)
    result = cli("show", "s.toml")
    assert (result.exit_code, result.stderr) == (1, f"Error: s.toml: {message}\n")


@pytest.mark.parametrize("t_max", [100, 150, 200])
def test_cosine_t_max_follows_pytorch(t_max):
    """Seed 003 tries T_max 100, 150 and 200 with 150 epochs: PyTorch's CosineAnnealingLR,
    stepped once per epoch, rising again after T_max."""
    import torch

    reg = default_registry()
    factor = reg.create("lr_schedule", "cosine", {"t_max": t_max, "min_factor": 0.01}, epochs=150)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=0.01)
    for epoch in range(150):
        assert factor(float(epoch), 0.0, 0) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), (
            epoch
        )
        opt.step()
        sched.step()


def test_cosine_t_max_default_is_the_run_and_must_outlast_the_warmup():
    reg = default_registry()
    plain = reg.create("lr_schedule", "cosine", {"warmup_epochs": 2}, epochs=30)
    same = reg.create("lr_schedule", "cosine", {"warmup_epochs": 2, "t_max": 30}, epochs=30)
    assert [plain(t / 4, 0.25, 0) for t in range(120)] == [same(t / 4, 0.25, 0) for t in range(120)]
    with pytest.raises(ValueError, match="t_max = 2 must be longer than the warmup"):
        reg.get("lr_schedule", "cosine").params(warmup_epochs=2, t_max=2)


def test_a_capped_growth_schedule_is_checked_without_walking_every_epoch():
    """Once at its cap a growth schedule stays there: a run of 10^12 epochs loads at once."""
    import time

    sched = REG.get("batch_schedule", "exp_growth")
    params = sched.params.model_validate(
        {"batch_size": 16, "incr_interval": 1, "rate": 2.0, "max_batch_size": 64}
    )
    t0 = time.perf_counter()
    sched.check(params, epochs=10**12, train_size=1000)
    assert time.perf_counter() - t0 < 1.0
