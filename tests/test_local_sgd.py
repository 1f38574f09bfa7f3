"""Local SGD (seed 003, step 3): simulated workers on their own shards, averaging every H
local steps, with SFO and communication rounds recorded."""

from __future__ import annotations

import pytest
import torch

from optlab.training.engine import average
from tests.test_checkpoint import HARD, after
from tests.test_checkpoint import run as run_resumable
from tests.test_engine import config, run


def rows(events):
    return [e for e in events if e["type"] == "epoch"]


def test_one_local_step_on_whole_shards_is_full_batch_sgd():
    """Two workers, each taking its whole half of the data as one batch, averaging after
    every step: SGD with momentum is linear in the gradient, so this is full-batch SGD."""
    central = rows(run(config(epochs=5, batch_schedule={"name": "constant", "batch_size": 50})))
    local = rows(
        run(
            config(
                epochs=5,
                batch_schedule={"name": "constant", "batch_size": 25},
                local_sgd={"workers": 2, "local_steps": 1},
            )
        )
    )
    for c, lo in zip(central, local, strict=True):
        assert lo["train_loss"] == pytest.approx(c["train_loss"], rel=1e-5)
        assert lo["test_loss"] == pytest.approx(c["test_loss"], rel=1e-5)
        assert lo["sfo"] == c["sfo"]  # equal SFO: every sample once per epoch
    assert [r["comm_rounds"] for r in central] == [1, 2, 3, 4, 5]
    assert [r["comm_rounds"] for r in local] == [1, 2, 3, 4, 5]


def test_averaging_less_often_trains_differently_and_counts_fewer_rounds():
    def go(h):
        return rows(
            run(
                config(
                    epochs=3,
                    batch_schedule={"name": "constant", "batch_size": 5},
                    local_sgd={"workers": 2, "local_steps": h},
                )
            )
        )

    every, fourth = go(1), go(4)
    # 25 examples per worker in batches of 5: 5 local steps an epoch, the last one averaging.
    assert [r["step"] for r in every] == [5, 10, 15]
    assert [r["comm_rounds"] for r in every] == [5, 10, 15]
    assert [r["comm_rounds"] for r in fourth] == [2, 4, 6]  # after steps 4 and 5
    assert [r["sfo"] for r in every] == [r["sfo"] for r in fourth] == [50, 100, 150]
    assert every[-1]["train_loss"] != fourth[-1]["train_loss"]
    # Deterministic: the same seed gives the same numbers.
    assert [r["train_loss"] for r in go(4)] == [r["train_loss"] for r in fourth]


def test_average_means_float_tensors_and_keeps_integer_buffers():
    nets = [torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)) for _ in range(3)]
    for i, net in enumerate(nets):
        with torch.no_grad():
            net[0].weight.fill_(float(i))
        net[1].num_batches_tracked.fill_(7 + i)
    average(nets)
    for net in nets:
        assert torch.equal(net[0].weight, torch.ones(2, 2))
        assert int(net[1].num_batches_tracked) == 7


def test_a_local_sgd_run_resumes_bit_for_bit(tmp_path):
    """Each worker's optimizer state (momentum buffers) is in the checkpoint."""
    cfg = config(
        **{**HARD, "probes": [{"name": "distance_from_init"}]},
        optimizer={
            "name": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 5e-4,
        },
        local_sgd={"workers": 3, "local_steps": 2},
    )
    reference = run_resumable(cfg, tmp_path / "ref")
    assert reference[-1]["type"] == "finished"
    folder = tmp_path / "kill"
    run_resumable(cfg, folder, die_at=lambda e: e["type"] == "epoch" and e["epoch"] == 3)
    second = run_resumable(cfg, folder, resume_upto=2)
    assert second[0]["type"] == "resumed" and second[0]["epoch"] == 2
    assert after(second, 2) == after(reference, 2)


def test_local_sgd_settings_are_checked(cli, tmp_path):
    from tests.conftest import write_study

    write_study(
        tmp_path,
        text="""
[base]
epochs = 1
precision = "amp"
local_sgd = { workers = 1, local_steps = 4 }
dataset = { name = "synthetic" }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
""",
        name="l.toml",
    )
    result = cli("show", "l.toml")
    assert result.exit_code == 1 and result.stderr == (
        "Error: l.toml: base: local_sgd.workers: Input should be greater than or equal to 2 "
        "(given 1)\n"
    )
    (tmp_path / "l.toml").write_text(
        (tmp_path / "l.toml").read_text().replace("workers = 1", "workers = 4")
    )
    result = cli("show", "l.toml")
    assert result.exit_code == 1 and result.stderr.startswith(
        "Error: l.toml: base: local_sgd: runs in fp32 or bf16, not amp (one loss "
        "scale would be shared by the workers)"
    )


def test_a_growing_batch_is_checked_against_a_workers_shard(cli, tmp_path):
    from tests.conftest import write_study

    write_study(
        tmp_path,
        text="""
[base]
epochs = 3
local_sgd = { workers = 4, local_steps = 2 }
dataset = { name = "synthetic", train_size = 100 }
model = { name = "mlp" }
optimizer = { name = "sgd", lr = 0.1 }
batch_schedule = { name = "exp_growth", batch_size = 10, incr_interval = 1, rate = 2.0 }
""",
        name="g.toml",
    )
    result = cli("show", "g.toml")
    # Central, 40 fits in 100 examples; a worker's shard is 25.
    assert result.exit_code == 1 and result.stderr == (
        "Error: g.toml: base: batch_schedule: the batch grows to 40 in epoch 3, past the 25 "
        "training examples of a worker's shard (4 workers)\n"
    )
