"""Probes: each against an exact computation on a tiny model, their schedules, and proof that
probing does not change training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from optlab.plugins.builtins.probes import ProbeParams
from optlab.plugins.plugin import TensorData
from optlab.plugins.registry import default_registry
from optlab.training.engine import DataCache, train
from optlab.training.probing import Probes
from tests.test_engine import config

N = 24


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=g)
    y = torch.randint(0, 3, (N,), generator=g)
    data = TensorData(x, y, x[:4], y[:4], num_classes=3)
    return model, data


def measure(table, model, data, optimizer=None, epoch=1):
    probes = Probes(
        [table],
        default_registry(),
        model=model,
        optimizer=optimizer,
        data=data,
        augment=lambda x, g: x,
        seed=0,
        epochs=3,
        device=torch.device("cpu"),
        channels_last=False,
    )
    events, seconds = probes.at_epoch(epoch, 7)
    assert seconds > 0
    (event,) = events
    assert event["probe"] == table["name"] and event["epoch"] == epoch and event["step"] == 7
    return event["values"]


def flat_params(model):
    return [p for p in model.parameters()]


def full_loss(model, data):
    return F.cross_entropy(model(data.x_train), data.y_train)


def layer_norms(tensors):
    """The per-layer keys of the tiny model: '0' and '2' (the two Linear layers)."""
    t = list(tensors)
    return {
        "0": math.sqrt(sum((v**2).sum().item() for v in t[:2])),
        "2": math.sqrt(sum((v**2).sum().item() for v in t[2:])),
        "global": math.sqrt(sum((v**2).sum().item() for v in t)),
    }


def exact_hessian(model, data):
    params = flat_params(model)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(vec):
        chunks = torch.split(vec, sizes)
        w1, b1, w2, b2 = (c.reshape(s) for c, s in zip(chunks, shapes, strict=True))
        out = torch.tanh(data.x_train @ w1.T + b1) @ w2.T + b2
        return F.cross_entropy(out, data.y_train)

    return torch.autograd.functional.hessian(loss_of, flat)


def test_grad_norm_matches_backward_per_layer_and_global():
    model, data = tiny()
    values = measure({"name": "grad_norm", "batch": N}, model, data)
    full_loss(model, data).backward()
    expected = layer_norms(p.grad for p in model.parameters())
    assert values == pytest.approx(expected, rel=1e-5)


def test_weight_norm_and_distance_from_init():
    model, data = tiny()
    probes = Probes(
        [{"name": "distance_from_init"}, {"name": "weight_norm"}],
        default_registry(),
        model=model,
        optimizer=None,
        data=data,
        augment=None,
        seed=0,
        epochs=3,
        device=torch.device("cpu"),
        channels_last=False,
    )
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.ones_like(p))
    events, _ = probes.at_epoch(1, 1)
    values = {e["probe"]: e["values"] for e in events}
    moved = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    assert values["distance_from_init"] == pytest.approx(layer_norms(moved), rel=1e-6)
    assert values["weight_norm"] == pytest.approx(
        layer_norms(p.detach() for p in model.parameters()), rel=1e-6
    )


def test_full_grad_norm_sums_chunks_into_the_whole_training_loss():
    model, data = tiny()
    values = measure({"name": "full_grad_norm", "batch": 5}, model, data)  # 5 uneven chunks
    grads = torch.autograd.grad(full_loss(model, data), flat_params(model))
    assert values["global"] == pytest.approx(layer_norms(grads)["global"], rel=1e-5)


def test_full_grad_norm_can_measure_the_augmented_training_set():
    """Seed 004's norm.csv: the gradient over the training set as training sees it. The
    augmentation here doubles the inputs; every chunk gets it, and only when asked."""
    model, data = tiny()
    probes = Probes(
        [
            {"name": "full_grad_norm", "batch": 5, "augment": True},
            {"name": "full_grad_norm", "batch": 5},
        ],
        default_registry(),
        model=model,
        optimizer=None,
        data=data,
        augment=lambda x, g: 2 * x,
        seed=0,
        epochs=3,
        device=torch.device("cpu"),
        channels_last=False,
    )
    augmented, plain = (e["values"]["global"] for e in probes.at_epoch(1, 7)[0])
    doubled = TensorData(2 * data.x_train, data.y_train, data.x_test, data.y_test, num_classes=3)
    grads = torch.autograd.grad(full_loss(model, doubled), list(model.parameters()))
    assert augmented == pytest.approx(math.sqrt(sum((g**2).sum().item() for g in grads)), rel=1e-5)
    grads = torch.autograd.grad(full_loss(model, data), list(model.parameters()))
    assert plain == pytest.approx(math.sqrt(sum((g**2).sum().item() for g in grads)), rel=1e-5)
    assert augmented != pytest.approx(plain, rel=1e-3)


def test_hessian_trace_is_within_the_hutchinson_error_of_the_exact_trace():
    model, data = tiny()
    vectors = 400
    values = measure({"name": "hessian_trace", "batch": N, "vectors": vectors}, model, data)
    h = exact_hessian(model, data)
    # Var(v^T H v) over Rademacher v = 2 (|H|_F^2 - sum H_ii^2): allow four standard errors.
    variance = 2 * ((h**2).sum() - (torch.diagonal(h) ** 2).sum()).item()
    tolerance = 4 * math.sqrt(variance / vectors)
    assert abs(values["global"] - torch.trace(h).item()) < tolerance
    assert tolerance < 0.5 * abs(torch.trace(h).item())  # the check has teeth


def test_top_eigenvalue_matches_the_largest_eigenvalue_of_the_full_hessian():
    model, data = tiny()
    values = measure({"name": "top_eigenvalue", "batch": N, "iterations": 200}, model, data)
    eig = torch.linalg.eigvalsh(exact_hessian(model, data))
    top = eig[eig.abs().argmax()].item()
    assert values["global"] == pytest.approx(top, rel=1e-3)


def test_grad_noise_scale_with_single_examples_is_the_unbiased_per_example_estimate():
    model, data = tiny()
    values = measure({"name": "grad_noise_scale", "batch": N, "micro_batch": 1}, model, data)
    # Per-example gradients, in the order of the probe batch (any order gives the same).
    per = []
    for i in range(N):
        g = torch.autograd.grad(
            F.cross_entropy(model(data.x_train[i : i + 1]), data.y_train[i : i + 1]),
            flat_params(model),
        )
        per.append(torch.cat([t.reshape(-1) for t in g]))
    per = torch.stack(per).double()
    mean = per.mean(0)
    trace = ((per - mean) ** 2).sum() / (N - 1)  # trace of the sample covariance
    grad_sq = (mean**2).sum() - trace / N  # unbiased |G|^2
    assert values["trace_sigma"] == pytest.approx(trace.item(), rel=1e-4)
    assert values["grad_sq"] == pytest.approx(grad_sq.item(), rel=1e-4)
    assert values["b_simple"] == pytest.approx((trace / grad_sq).item(), rel=1e-4)


def lars_after_one_step(lr=0.5, wd=0.01, tc=0.02):
    model, data = tiny()
    optimizer = default_registry().create(
        "optimizer", "lars", {"lr": lr, "weight_decay": wd, "trust_coefficient": tc}, model=model
    )
    full_loss(model, data).backward()
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    ratios = {
        n: tc * w[n].norm().item() / (g[n].norm().item() + wd * w[n].norm().item())
        for n in w
        if w[n].dim() > 1
    }  # biases are not adapted by default
    return model, data, optimizer, ratios


def test_trust_ratio_is_what_lars_applied_to_each_weight():
    model, data, optimizer, ratios = lars_after_one_step()
    values = measure({"name": "trust_ratio"}, model, data, optimizer)
    assert values == pytest.approx(ratios, rel=1e-4)


def test_effective_lr_is_the_group_lr_times_the_trust_ratio_and_over_w_squared():
    model, data, optimizer, ratios = lars_after_one_step(lr=0.5)
    values = measure({"name": "effective_lr"}, model, data, optimizer)
    assert values["global"] == 0.5
    assert values["0.weight"] == pytest.approx(0.5 * ratios["0.weight"], rel=1e-4)
    assert values["0.bias"] == 0.5  # not adapted
    w2 = (model[0].weight.detach() ** 2).sum().item()
    assert values["0.weight:angular"] == pytest.approx(0.5 * ratios["0.weight"] / w2, rel=1e-4)


# ---- schedules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "epochs"),
    [
        ({}, [1, 2, 3, 4, 5, 6]),
        ({"every": 2}, [2, 4, 6]),
        ({"epochs": [0, 3, 3, 1]}, [0, 1, 3]),
        ({"epochs": "2-4"}, [2, 3, 4]),
        ({"first_steps": 10}, []),
    ],
)
def test_schedules_name_the_epochs_after_which_a_probe_runs(table, epochs):
    assert [e for e in range(7) if ProbeParams(**table).runs_at(e)] == epochs


@pytest.mark.parametrize(
    "table",
    [{"every": 2, "first_steps": 3}, {"epochs": "4-2"}, {"epochs": "first"}, {"epochs": []}],
)
def test_bad_schedules_are_rejected(table):
    with pytest.raises(ValueError):
        ProbeParams(**table)


def run_engine(cfg):
    events = []
    train(
        {"run_id": "r", "seed": 3, "config": cfg},
        events.append,
        DataCache(default_registry(), torch.device("cpu")),
    )
    return events


def test_probes_do_not_change_training_and_stay_out_of_seconds_and_sfo():
    # The CNN has batch norm; probes in train mode must leave its running statistics alone,
    # and their random vectors must not shift the data order.
    base = config(
        model={"name": "cnn", "channels": [4]},
        epochs=2,
        dataset={
            "name": "synthetic",
            "classes": 3,
            "shape": [1, 8, 8],
            "train_size": 64,
            "test_size": 32,
            "noise": 1.0,
            "seed": 0,
        },
    )
    probed = dict(
        base,
        probes=[
            {"name": "hessian_trace", "vectors": 2, "batch": 16, "mode": "train", "augment": True},
            {"name": "grad_norm", "first_steps": 3},
            {"name": "top_eigenvalue", "iterations": 2, "epochs": [0, 2]},
        ],
    )
    plain, with_probes = run_engine(base), run_engine(probed)
    rows = [[e for e in ev if e["type"] == "epoch"] for ev in (plain, with_probes)]
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "step", "samples", "sfo")
    assert [[r[k] for k in keys] for r in rows[0]] == [[r[k] for k in keys] for r in rows[1]]
    assert all(r["probe_seconds"] == 0 for r in rows[0])
    assert all(r["probe_seconds"] > 0 for r in rows[1])
    probes = [(e["probe"], e["epoch"], e["step"]) for e in with_probes if e["type"] == "probe"]
    assert probes == [
        ("top_eigenvalue", 0, 0),
        ("grad_norm", 1, 1),
        ("grad_norm", 1, 2),
        ("grad_norm", 1, 3),
        ("hessian_trace", 1, 4),
        ("hessian_trace", 2, 8),
        ("top_eigenvalue", 2, 8),
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_probes_on_cuda_with_amp_and_channels_last_do_not_change_training():
    base = config(
        model={"name": "cnn", "channels": [8]},
        epochs=2,
        precision="amp",
        augmentation={"name": "flip_crop", "pad": 1, "flip": True},
        dataset={
            "name": "synthetic",
            "classes": 3,
            "shape": [3, 8, 8],
            "train_size": 64,
            "test_size": 32,
            "noise": 1.0,
            "seed": 0,
        },
    )
    probed = dict(
        base,
        probes=[
            {"name": "hessian_trace", "vectors": 2, "augment": True},
            {"name": "grad_noise_scale", "batch": 32, "micro_batch": 8},
            {"name": "grad_norm", "first_steps": 2},
        ],
    )

    def go(cfg):
        events = []
        train(
            {"run_id": "r", "seed": 3, "config": cfg},
            events.append,
            DataCache(default_registry(), torch.device("cuda")),
        )
        return events

    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    plain, with_probes = go(base), go(probed)
    keys = ("train_loss", "test_loss", "test_acc", "sfo")
    # cuBLAS may still sum in another order from run to run: equal to float tolerance.
    assert [[e[k] for k in keys] for e in with_probes if e["type"] == "epoch"] == [
        pytest.approx([e[k] for k in keys], rel=1e-4) for e in plain if e["type"] == "epoch"
    ]
    values = [v for e in with_probes if e["type"] == "probe" for v in e["values"].values()]
    assert values and all(math.isfinite(v) for v in values)


def test_a_non_finite_probe_value_travels_as_null_and_is_stored_as_null(tmp_path):
    from optlab.events import decode, encode
    from optlab.store import core as st

    line = encode(
        {
            "type": "probe",
            "run_id": "r",
            "epoch": 1,
            "step": 4,
            "probe": "hessian_trace",
            "values": {"global": float("nan")},
        }
    )
    assert "NaN" not in line
    with st.writing(tmp_path / "s.duckdb") as con:
        st.ensure_schema(con)
        st.apply_events(con, [decode(line)])
        assert con.execute("select key, value from probes").fetchall() == [("global", None)]


def test_full_grad_norm_in_the_seed_004_references_way():
    """Shuffled chunks of 100 with batch norm in train mode, by hand as the reference does
    it: each chunk's mean loss backpropagated and the gradients averaged over chunks. In
    train mode the chunking changes the value (each chunk's own BN statistics)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3)
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 4, generator=g), torch.randint(0, 3, (300,), generator=g)
    data = TensorData(x, y, x[:4], y[:4], num_classes=3)
    table = {"name": "full_grad_norm", "batch": 100, "shuffle": True, "mode": "train"}
    got = measure(table, model, data)["global"]

    reference = torch.nn.Sequential(*[layer for layer in model]).train()
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0 + 1_000_003))
    reference.zero_grad()
    for chunk in order.split(100):
        F.cross_entropy(reference(x[chunk]), y[chunk]).backward()
    by_hand = math.sqrt(sum(((p.grad / 3) ** 2).sum().item() for p in reference.parameters()))
    assert got == pytest.approx(by_hand, rel=1e-5)
    in_file_order = measure({**table, "shuffle": False}, model, data)["global"]
    assert in_file_order != pytest.approx(got, rel=1e-3)
    assert default_registry().get("probe", "full_grad_norm").params(batch=100).model_dump() == {
        **ProbeParams().model_dump(),
        "batch": 100,
    }  # shuffle off is absent: the ids of runs from before it stay put
