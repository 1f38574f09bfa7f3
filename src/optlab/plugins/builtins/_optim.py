"""LARS, LAMB and Lion. LARS and LAMB do not modify ``p.grad``; each keeps the last trust
ratio of every parameter in ``optimizer.state[p]["trust_ratio"]`` (a 0-d tensor, on the
device) for probes.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from optlab.plugins.builtins.optimizers import (
    LAMBParams,
    LARSParams,
    LionParams,
    SAMParams,
    ScheduleFreeAdamWParams,
    param_groups,
)
from optlab.plugins.registry import default_registry


def _trust(numerator: torch.Tensor, denominator: torch.Tensor, coefficient: float) -> torch.Tensor:
    # 1 where either norm is zero (fresh zero-initialised layers, zero gradients).
    ok = (numerator > 0) & (denominator > 0)
    return torch.where(
        ok, coefficient * numerator / denominator.clamp_min(1e-30), torch.ones_like(numerator)
    )


class LARS(torch.optim.Optimizer):
    """update = tc * ||w|| / (||g|| + wd ||w|| + eps) * (g + wd w);
    buf = momentum * buf + update; w -= lr * buf."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        weight_decay: float,
        trust_coefficient: float,
        eps: float,
    ):
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "adapt": True,
        }
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

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        trust_coefficient: float,
    ):
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "adapt": True,
        }
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
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt().add_(eps))
                if wd:
                    update.add_(p, alpha=wd)
                if group["adapt"]:
                    ratio = _trust(p.norm(), update.norm(), group["trust_coefficient"])
                    update.mul_(ratio)
                    state["trust_ratio"] = ratio
                p.add_(update, alpha=-group["lr"])
        return loss


def build_lars(params: LARSParams, *, model: Any, **_: Any) -> LARS:
    groups = param_groups(model, params.weight_decay, params.exclude_bias_norm, True)
    return LARS(
        groups,
        lr=params.lr,
        momentum=params.momentum,
        weight_decay=params.weight_decay,
        trust_coefficient=params.trust_coefficient,
        eps=params.eps,
    )


def build_lamb(params: LAMBParams, *, model: Any, **_: Any) -> LAMB:
    groups = param_groups(model, params.weight_decay, params.exclude_bias_norm, True)
    return LAMB(
        groups,
        lr=params.lr,
        betas=params.betas,
        eps=params.eps,
        weight_decay=params.weight_decay,
        trust_coefficient=params.trust_coefficient,
    )


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
    return Lion(groups, lr=params.lr, betas=params.betas, weight_decay=params.weight_decay)


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al. 2021, Algorithm 1): with g the gradient at
    w (the engine's backward pass), e = rho g / ||g|| (one norm over every parameter); the
    closure takes the gradient at w + e; w comes back, and the base optimizer steps with
    that gradient. Its param groups, state and checkpoints are the base optimizer's."""

    optlab_closure = True

    def __init__(self, base: torch.optim.Optimizer, rho: float):
        self.base, self.rho = base, rho
        super().__init__(base.param_groups, base.defaults)
        self.param_groups, self.state = base.param_groups, base.state

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise RuntimeError("SAM takes a step with a closure that re-evaluates the loss")
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        scale = self.rho / (norm + 1e-12)
        moved = [(p, p.grad * scale) for p in params]
        for p, e in moved:
            p.add_(e)
        loss = torch.enable_grad()(closure)()
        for p, e in moved:
            p.sub_(e)
        self.base.step()
        return loss

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups, self.state = self.base.param_groups, self.base.state

    # A base that trains on one set of weights and is evaluated on another (schedule-free):
    # the engine's train() and eval() reach it, so evaluation, probes, checkpoints and the
    # saved weights see its evaluation weights.
    def train(self) -> None:
        switch = getattr(self.base, "train", None)
        if callable(switch):
            switch()

    def eval(self) -> None:
        switch = getattr(self.base, "eval", None)
        if callable(switch):
            switch()


def build_sam(params: SAMParams, *, model: Any, **context: Any) -> SAM:

    base = default_registry().create(
        "optimizer", params.base, dict(params.model_extra or {}), model=model, **context
    )
    return SAM(base, params.rho)


class ScheduleFreeAdamW(torch.optim.Optimizer):
    """Schedule-free AdamW (Defazio et al. 2024, "The Road Less Scheduled", Algorithm 1).

    Three sequences: z (the base AdamW iterate), x (the weighted average of the z, what is
    evaluated) and y = (1 - b1) z + b1 x (where gradients are taken). The parameters hold y
    in train mode and x in eval mode; the state holds z and Adam's second moment. A step,
    with the LR warmed up, Adam's bias correction folded into it, and c = lr_max^p /
    sum(lr_max^p):
        d = g / (sqrt(v) + eps) + wd y;  z' = z - lr d;  x' = (1 - c) x + c z';
    carried out on y alone as y' = (1 - c) y + c z + lr (b1 (1 - c) - 1) d (substitute
    x = (y - (1 - b1) z) / b1 into y' = (1 - b1) z' + b1 x').
    """

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        warmup_steps: int,
        weight_lr_power: float,
    ):
        super().__init__(
            params,
            {
                "lr": lr,
                "betas": betas,
                "eps": eps,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
                "weight_lr_power": weight_lr_power,
                "k": 0,
                "lr_max": 0.0,
                "weight_sum": 0.0,
                "train_mode": True,
            },
        )

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to x = (y - (1 - b1) z) / b1."""
        self._switch(False, lambda b1: 1 - 1 / b1)

    @torch.no_grad()
    def train(self) -> None:
        """Parameters to y = b1 x + (1 - b1) z."""
        self._switch(True, lambda b1: 1 - b1)

    def _switch(self, to_train: bool, weight) -> None:
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            w = weight(group["betas"][0])
            for p in group["params"]:
                z = self.state[p].get("z")
                if z is not None:
                    p.lerp_(z, w)
            group["train_mode"] = to_train

    @torch.no_grad()
    def step(self, closure=None):
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            if not group["train_mode"]:
                raise RuntimeError("schedule-free AdamW steps in train mode (call train())")
            (b1, b2), eps, wd, k = group["betas"], group["eps"], group["weight_decay"], group["k"]
            warm = min(1.0, (k + 1) / group["warmup_steps"]) if group["warmup_steps"] else 1.0
            lr = group["lr"] * warm * math.sqrt(1 - b2 ** (k + 1))
            group["lr_max"] = lr_max = max(lr, group["lr_max"])
            weight = lr_max ** group["weight_lr_power"]
            group["weight_sum"] += weight
            c = weight / group["weight_sum"] if group["weight_sum"] else 0.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["z"] = p.clone()
                    state["exp_avg_sq"] = torch.zeros_like(p)
                z, v = state["z"], state["exp_avg_sq"]
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                d = p.grad / v.sqrt().add_(eps)
                if wd:
                    d.add_(p, alpha=wd)
                p.lerp_(z, c).add_(d, alpha=lr * (b1 * (1 - c) - 1))
                z.sub_(d, alpha=lr)
            group["k"] = k + 1
        return loss


def build_schedulefree_adamw(
    params: ScheduleFreeAdamWParams, *, model: Any, **_: Any
) -> ScheduleFreeAdamW:
    groups = param_groups(model, params.weight_decay, params.exclude_bias_norm)
    return ScheduleFreeAdamW(groups, **params.model_dump(exclude={"exclude_bias_norm"}))
