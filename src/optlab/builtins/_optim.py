"""LARS, LAMB and Lion. LARS and LAMB do not modify ``p.grad``; each keeps the last trust
ratio of every parameter in ``optimizer.state[p]["trust_ratio"]`` (a 0-d tensor, on the
device) for probes.
"""

from __future__ import annotations

from typing import Any

import torch

from optlab.builtins.optimizers import LAMBParams, LARSParams, LionParams, param_groups


def _trust(numerator: torch.Tensor, denominator: torch.Tensor, coefficient: float
           ) -> torch.Tensor:
    # 1 where either norm is zero (fresh zero-initialised layers, zero gradients).
    ok = (numerator > 0) & (denominator > 0)
    return torch.where(ok, coefficient * numerator / denominator.clamp_min(1e-30),
                       torch.ones_like(numerator))


class LARS(torch.optim.Optimizer):
    """update = tc * ||w|| / (||g|| + wd ||w|| + eps) * (g + wd w);
    buf = momentum * buf + update; w -= lr * buf."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float,
                 trust_coefficient: float, eps: float):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "eps": eps, "adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            wd, tc, eps = group["weight_decay"], group["trust_coefficient"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                state = self.state[p]
                if group["adapt"]:
                    w_norm, g_norm = p.norm(), p.grad.norm()
                    ratio = _trust(w_norm, g_norm + wd * w_norm + eps, tc)
                    update.mul_(ratio)
                    state["trust_ratio"] = ratio
                if group["momentum"]:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = update.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(update)
                    update = buf
                p.add_(update, alpha=-group["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """m, v: Adam moments with bias correction; r = m^ / (sqrt(v^) + eps) + wd w;
    w -= lr * tc * ||w|| / ||r|| * r."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, trust_coefficient: float):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "trust_coefficient": trust_coefficient, "adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt().add_(eps))
                if wd:
                    update.add_(p, alpha=wd)
                if group["adapt"]:
                    ratio = _trust(p.norm(), update.norm(), group["trust_coefficient"])
                    update.mul_(ratio)
                    state["trust_ratio"] = ratio
                p.add_(update, alpha=-group["lr"])
        return loss


def build_lars(params: LARSParams, *, model: Any, **_: Any) -> LARS:
    groups = param_groups(model, params.weight_decay, params.exclude_bias_norm)
    return LARS(groups, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay,
                trust_coefficient=params.trust_coefficient, eps=params.eps)


def build_lamb(params: LAMBParams, *, model: Any, **_: Any) -> LAMB:
    groups = param_groups(model, params.weight_decay, params.exclude_bias_norm)
    return LAMB(groups, lr=params.lr, betas=params.betas, eps=params.eps,
                weight_decay=params.weight_decay, trust_coefficient=params.trust_coefficient)


class Lion(torch.optim.Optimizer):
    """c = b1 m + (1 - b1) g; w -= lr (sign(c) + wd w); m = b2 m + (1 - b2) g
    (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Algorithm 2)."""

    def __init__(self, params, lr: float, betas: tuple[float, float], weight_decay: float):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            (b1, b2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                update = m.mul(b1).add_(p.grad, alpha=1 - b1).sign_()
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr)
                m.mul_(b2).add_(p.grad, alpha=1 - b2)
        return loss


def build_lion(params: LionParams, *, model: Any, **_: Any) -> Lion:
    groups = param_groups(model, params.weight_decay, params.exclude_bias_norm)
    for g in groups:
        g.pop("adapt", None)
    return Lion(groups, lr=params.lr, betas=params.betas, weight_decay=params.weight_decay)
