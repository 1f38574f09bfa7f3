"""One step of each optimizer against its published update rule, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optlab.plugins.registry import builtin_registry

REG = builtin_registry()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        self.bias = nn.Parameter(torch.tensor([0.5, -0.5]))


W0 = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]
B0 = [0.5, -0.5]
GW = [[0.1, 0.2, -0.3], [0.4, -0.5, 0.6]]
GB = [0.2, -0.1]


def flat(rows):
    return [x for r in rows for x in (r if isinstance(r, list) else [r])]


WG = list(zip(flat(W0), flat(GW), strict=True))  # (weight, its gradient) pairs
BG = list(zip(B0, GB, strict=True))


def stepped(name, steps=1, **params):
    model = Tiny()
    opt = REG.create("optimizer", name, params, model=model)
    for _ in range(steps):
        model.weight.grad = torch.tensor(GW)
        model.bias.grad = torch.tensor(GB)
        opt.step()
    return model, opt


def norm(xs):
    return math.sqrt(sum(x * x for x in xs))


def close(tensor, expected):
    assert tensor.flatten().tolist() == pytest.approx(flat(expected), rel=1e-5, abs=1e-7)


def test_sgd_with_weight_decay():
    model, _ = stepped("sgd", lr=0.1, weight_decay=0.01)
    close(model.weight, [w - 0.1 * (g + 0.01 * w) for w, g in WG])


def test_sgd_momentum_dampening_two_steps():
    # buf1 = g; buf2 = 0.9 buf1 + (1 - 0.5) g; w2 = w0 - lr (buf1 + buf2)
    model, _ = stepped("sgd", steps=2, lr=0.1, momentum=0.9, dampening=0.5)
    expected = [w - 0.1 * (g + (0.9 * g + 0.5 * g)) for w, g in WG]
    close(model.weight, expected)


def test_sgd_nesterov_two_steps():
    # buf1 = g, step1 = g + m buf1; buf2 = m g + g, step2 = g + m buf2
    m, lr = 0.9, 0.1
    model, _ = stepped("sgd", steps=2, lr=lr, momentum=m, nesterov=True)
    expected = [w - lr * (g + m * g) - lr * (g + m * (m * g + g)) for w, g in WG]
    close(model.weight, expected)


def test_sgd_can_exclude_bias_from_weight_decay():
    model, _ = stepped("sgd", lr=0.1, weight_decay=0.5, exclude_bias_norm=True)
    close(model.bias, [b - 0.1 * g for b, g in BG])
    close(model.weight, [w - 0.1 * (g + 0.5 * w) for w, g in WG])


def adam_update(g, t, b1=0.9, b2=0.999, eps=1e-8):
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    return (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)


def test_adam_adds_l2_decay_to_the_gradient():
    model, _ = stepped("adam", lr=0.01, weight_decay=0.1)
    expected = [w - 0.01 * adam_update(g + 0.1 * w, 1) for w, g in WG]
    close(model.weight, expected)


def test_adamw_decouples_weight_decay():
    model, _ = stepped("adamw", lr=0.01, weight_decay=0.1)
    expected = [w * (1 - 0.01 * 0.1) - 0.01 * adam_update(g, 1) for w, g in WG]
    close(model.weight, expected)


def test_lion_two_steps_sign_of_interpolated_momentum_and_decoupled_decay():
    # step 1: m0 = 0, c = (1 - b1) g -> sign(g); w1 = w0 (1 - lr wd) - lr sign(g);
    #         m1 = (1 - b2) g
    # step 2 with g2 = -g / 2: c = b1 (1 - b2) g - (1 - b1) g / 2 = -0.041 g -> -sign(g)
    lr, wd, (b1, b2) = 0.01, 0.1, (0.9, 0.99)
    model = Tiny()
    opt = REG.create("optimizer", "lion", {"lr": lr, "weight_decay": wd}, model=model)
    for scale in (1.0, -0.5):
        model.weight.grad = torch.tensor(GW) * scale
        model.bias.grad = torch.tensor(GB) * scale
        opt.step()
    sign = [math.copysign(1.0, g) for _, g in WG]
    assert b1 * (1 - b2) - (1 - b1) * 0.5 < 0  # the second step's direction flips
    w1 = [w * (1 - lr * wd) - lr * s for (w, _), s in zip(WG, sign, strict=True)]
    close(model.weight, [w * (1 - lr * wd) + lr * s for w, s in zip(w1, sign, strict=True)])
    m2 = [b2 * (1 - b2) * g + (1 - b2) * (-0.5 * g) for _, g in WG]
    close(opt.state[model.weight]["exp_avg"], m2)
    # every coordinate moves by lr (besides the decay), whatever its gradient's size
    moved = [abs(w0 * (1 - lr * wd) - w) for (w0, _), w in zip(WG, w1, strict=True)]
    assert moved == pytest.approx([lr] * len(moved))


def test_lars_layerwise_trust_ratio_and_momentum():
    lr, wd, tc, eps = 0.5, 0.01, 0.001, 1e-8
    model, opt = stepped(
        "lars", lr=lr, weight_decay=wd, trust_coefficient=tc, eps=eps, momentum=0.9
    )
    w, g = flat(W0), flat(GW)
    ratio = tc * norm(w) / (norm(g) + wd * norm(w) + eps)
    close(model.weight, [wi - lr * ratio * (gi + wd * wi) for wi, gi in zip(w, g, strict=True)])
    # biases: no decay, no adaptation, plain momentum SGD
    close(model.bias, [b - lr * gb for b, gb in BG])
    assert float(opt.state[model.weight]["trust_ratio"]) == pytest.approx(ratio, rel=1e-5)
    assert "trust_ratio" not in opt.state[model.bias]


def test_lamb_trust_ratio_on_adam_direction_plus_decay():
    lr, wd = 0.01, 0.1
    model, opt = stepped("lamb", lr=lr, weight_decay=wd)
    w, g = flat(W0), flat(GW)
    r = [adam_update(gi, 1, eps=1e-6) + wd * wi for wi, gi in zip(w, g, strict=True)]
    ratio = norm(w) / norm(r)
    close(model.weight, [wi - lr * ratio * ri for wi, ri in zip(w, r, strict=True)])
    close(model.bias, [b - lr * adam_update(gb, 1, eps=1e-6) for b, gb in BG])
    assert float(opt.state[model.weight]["trust_ratio"]) == pytest.approx(ratio, rel=1e-5)


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_layerwise_optimizers_leave_the_gradient_alone(name):
    model = Tiny()
    opt = REG.create("optimizer", name, {"weight_decay": 0.1}, model=model)
    model.weight.grad = torch.tensor(GW)
    model.bias.grad = torch.tensor(GB)
    opt.step()
    close(model.weight.grad, GW)
    close(model.bias.grad, GB)


def test_trust_ratio_is_one_for_a_zero_layer():
    model = Tiny()
    with torch.no_grad():
        model.weight.zero_()
    opt = REG.create("optimizer", "lars", {"weight_decay": 0.0}, model=model)
    model.weight.grad = torch.tensor(GW)
    opt.step()
    assert float(opt.state[model.weight]["trust_ratio"]) == 1.0


# ---- optimizers that need more than step() -------------------------------------------------

A_W = [[1.0, 2.0, 3.0], [0.5, 1.5, 2.5]]  # the quadratic's curvature per coordinate
A_B = [2.0, 4.0]


def quadratic(model):
    """L = 1/2 sum a w^2 over both parameters: gradient a w."""
    return 0.5 * (
        (torch.tensor(A_W) * model.weight**2).sum() + (torch.tensor(A_B) * model.bias**2).sum()
    )


def with_closure(name, steps, **params):
    model = Tiny()
    opt = REG.create("optimizer", name, params, model=model)
    calls = []

    def closure(create_graph=False):
        calls.append(1)
        opt.zero_grad()
        loss = quadratic(model)
        loss.backward(create_graph=create_graph)
        return loss

    for _ in range(steps):
        closure()  # the engine's own backward pass
        opt.step(closure)
    return model, opt, len(calls) - steps


def test_sam_two_steps_take_the_gradient_at_the_worst_nearby_point():
    # g = a w; e = rho g / ||g|| (one norm over every parameter); w' = w - lr a (w + e)
    lr, rho = 0.1, 0.05
    w, a = flat(W0) + B0, flat(A_W) + A_B
    for _ in range(2):
        g = [ai * wi for ai, wi in zip(a, w, strict=True)]
        e = [rho * gi / norm(g) for gi in g]
        w = [wi - lr * ai * (wi + ei) for wi, ai, ei in zip(w, a, e, strict=True)]
    model, opt, extra = with_closure("sam", 2, rho=rho, lr=lr)
    close(model.weight, w[:6])
    close(model.bias, w[6:])
    assert extra == 2  # one more gradient evaluation a step
    assert opt.base.__class__.__name__ == "SGD"


def test_sam_checkpoints_are_the_base_optimizers_and_lr_writes_reach_it():
    _, opt, _ = with_closure("sam", 1, rho=0.05, lr=0.1, momentum=0.9)
    state = opt.state_dict()
    assert "momentum_buffer" in next(iter(state["state"].values()))
    model = Tiny()
    again = REG.create("optimizer", "sam", {"rho": 0.05, "lr": 0.1, "momentum": 0.9}, model=model)
    again.load_state_dict(state)
    again.param_groups[0]["lr"] = 0.01  # what the engine does every step
    assert again.base.param_groups[0]["lr"] == 0.01
    assert again.base.state is again.state


@pytest.mark.parametrize(
    "params,message",
    [
        (
            {"base": "adamw", "momentum": 0.9},
            "base adamw: momentum: Extra inputs are not permitted",
        ),
        ({"base": "adamm"}, "base: unknown optimizer 'adamm'; did you mean 'adam'?"),
        ({"base": "sam"}, "SAM wraps another optimizer, not itself"),
    ],
)
def test_sam_checks_the_base_optimizers_settings(params, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message.replace("?", r"\?")):
        REG.get("optimizer", "sam").params(**params)


def schedule_free_by_hand(grads, lr, b1, b2, eps, wd, warmup, power=2.0):
    """The paper's three sequences, kept apart: z, x (evaluated) and y (trained on)."""
    z = x = y = flat(W0)
    v = [0.0] * len(z)
    lr_max = weight_sum = 0.0
    for k, g in enumerate(grads):
        lr_k = lr * min(1.0, (k + 1) / warmup) * math.sqrt(1 - b2 ** (k + 1))
        lr_max = max(lr_max, lr_k)
        weight_sum += lr_max**power
        c = lr_max**power / weight_sum
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g, strict=True)]
        d = [gi / (math.sqrt(vi) + eps) + wd * yi for gi, vi, yi in zip(g, v, y, strict=True)]
        z = [zi - lr_k * di for zi, di in zip(z, d, strict=True)]
        x = [(1 - c) * xi + c * zi for xi, zi in zip(x, z, strict=True)]
        y = [(1 - b1) * zi + b1 * xi for zi, xi in zip(z, x, strict=True)]
    return x, y


def test_schedule_free_adamw_trains_on_y_and_is_evaluated_on_the_average_x():
    grads = [flat(GW), [-2 * g for g in flat(GW)], [0.5 * g for g in flat(GW)]]
    lr, b1, b2, eps, wd, warmup = 0.1, 0.9, 0.999, 1e-8, 0.1, 2
    x, y = schedule_free_by_hand(grads, lr, b1, b2, eps, wd, warmup)
    model = Tiny()
    opt = REG.create(
        "optimizer",
        "schedulefree_adamw",
        {"lr": lr, "weight_decay": wd, "warmup_steps": warmup},
        model=model,
    )
    for g in grads:
        model.weight.grad = torch.tensor(g).reshape(2, 3)
        model.bias.grad = torch.zeros(2)
        opt.step()
    close(model.weight, y)
    opt.eval()
    close(model.weight, x)
    opt.eval()  # idempotent
    close(model.weight, x)
    assert max(abs(a - b) for a, b in zip(x, y, strict=True)) > 1e-3  # they do differ
    opt.train()
    close(model.weight, y)
    with pytest.raises(RuntimeError, match="train mode"):
        opt.eval()
        opt.step()


def test_sam_over_schedule_free_is_evaluated_on_its_bases_x():
    """The engine's eval()/train() reach SAM's base: a schedule-free base is evaluated,
    probed, checkpointed and saved on x, not on the y it trains on."""
    from optlab.training.engine import weights_for

    model = Tiny()
    params = {"base": "schedulefree_adamw", "rho": 0.05, "lr": 0.1, "warmup_steps": 2}
    opt = REG.create("optimizer", "sam", params, model=model)

    def closure():
        loss = (model.weight**2).sum() + (model.bias**2).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.zero_grad()
        closure()
        opt.step(closure)
    y = model.weight.detach().clone()
    weights_for(opt, "eval")
    assert opt.base.param_groups[0]["train_mode"] is False
    x = model.weight.detach().clone()
    assert (x - y).abs().max() > 1e-4
    weights_for(opt, "train")
    assert torch.equal(model.weight.detach(), y)


def test_local_sgd_refuses_an_optimizer_evaluated_on_other_weights(cli, tmp_path):
    base = """
[base]
epochs = 1
dataset = { name = "synthetic", classes = 3, shape = [1, 4, 4], train_size = 48, test_size = 24 }
model = { name = "mlp", hidden = [8] }
local_sgd = { workers = 2, local_steps = 1 }
"""
    for optimizer in (
        '{ name = "schedulefree_adamw", lr = 0.01 }',
        '{ name = "sam", base = "schedulefree_adamw", lr = 0.01 }',
    ):
        (tmp_path / "l.toml").write_text(base + f"optimizer = {optimizer}\n")
        result = cli("show", "l.toml")
        assert result.exit_code == 1
        assert result.stderr == (
            "Error: l.toml: base: local_sgd: not with schedulefree_adamw: its workers' "
            "evaluation weights (x) and iterates (z) would not be averaged, only the weights "
            "it trains on; use another optimizer, or no local_sgd\n"
        )


def test_the_example_sophia_estimates_the_hessian_through_the_closure(monkeypatch):
    """For L = 1/2 sum a w^2 the Hessian is diag(a), and u * (H u) = a for any Rademacher
    u: the estimate is exact, so two steps can be computed by hand."""
    from tests.conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "optlab-example" / "src"))
    from optlab_example import sophia

    lr, (b1, b2), gamma, wd = 0.01, (0.9, 0.99), 0.5, 0.1
    model = Tiny()
    opt = sophia.create(
        {"lr": lr, "betas": [b1, b2], "gamma": gamma, "weight_decay": wd, "every": 2}, model=model
    )
    calls = []

    def closure(create_graph=False):  # as the engine's
        calls.append(create_graph)
        opt.zero_grad()
        loss = quadratic(model)
        if create_graph:
            params = [model.weight, model.bias]
            for p, g in zip(
                params, torch.autograd.grad(loss, params, create_graph=True), strict=True
            ):
                p.grad = g
        else:
            loss.backward()
        return loss

    w, a = flat(W0) + B0, flat(A_W) + A_B
    m, h = [0.0] * len(w), [0.0] * len(w)
    for k in range(3):
        g = [ai * wi for ai, wi in zip(a, w, strict=True)]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        if k % 2 == 0:
            h = [b2 * hi + (1 - b2) * ai for hi, ai in zip(h, a, strict=True)]
        w = [
            wi * (1 - lr * wd) - lr * max(-1.0, min(1.0, mi / max(gamma * hi, 1e-12)))
            for wi, mi, hi in zip(w, m, h, strict=True)
        ]
        closure()
        opt.step(closure)
    close(model.weight, w[:6])
    close(model.bias, w[6:])
    assert calls == [False, True, False, False, True]  # a Hessian step at steps 0 and 2
