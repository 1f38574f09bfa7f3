"""signSGD: x <- x - lr * sign(m), m <- momentum * m + (1 - momentum) * g; and Sophia-H."""

from __future__ import annotations

import torch


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["momentum"]:
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(g, alpha=1 - group["momentum"])
                    g = buf
                p.add_(torch.sign(g), alpha=-group["lr"])
        return loss


class SophiaH(torch.optim.Optimizer):
    """Sophia with Hutchinson's estimator (Liu et al. 2023, Algorithm 3):

        m <- b1 m + (1 - b1) g
        every k steps: h <- b2 h + (1 - b2) u * (H u), u a Rademacher vector
        x <- x (1 - lr wd) - lr clip(m / max(gamma h, eps), -1, 1)

    H u comes from the engine's closure: ``closure(create_graph=True)`` back-propagates with
    the graph kept, so the gradient can be differentiated again against u. The vectors are
    drawn from ``seed`` and the step number, so a resumed run draws the same ones.
    """

    optlab_closure = True

    def __init__(
        self,
        params,
        lr: float,
        betas: tuple[float, float],
        gamma: float,
        eps: float,
        weight_decay: float,
        every: int,
        seed: int,
    ):
        super().__init__(
            params,
            {
                "lr": lr,
                "betas": betas,
                "gamma": gamma,
                "eps": eps,
                "weight_decay": weight_decay,
                "every": every,
                "seed": seed,
                "k": 0,
            },
        )

    @torch.no_grad()
    def step(self, closure=None):
        first = self.param_groups[0]
        k = first["k"]
        estimates = {}
        if closure is not None and k % first["every"] == 0:
            estimates = self._hutchinson(closure, first["seed"] + k)
        for group in self.param_groups:
            (b1, b2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["hessian"] = torch.zeros_like(p)
                m, h = state["exp_avg"], state["hessian"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                if p in estimates:
                    h.mul_(b2).add_(estimates[p], alpha=1 - b2)
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                ratio = m / (group["gamma"] * h).clamp_min(group["eps"])
                p.add_(ratio.clamp_(-1, 1), alpha=-lr)
            group["k"] = k + 1
        return None

    def _hutchinson(self, closure, seed: int) -> dict:
        with torch.enable_grad():
            closure(create_graph=True)
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            gen = torch.Generator(device=params[0].device).manual_seed(seed)
            us = [
                torch.randint(0, 2, p.shape, generator=gen, device=p.device)
                .to(p.dtype)
                .mul_(2)
                .sub_(1)
                for p in params
            ]
            products = torch.autograd.grad([p.grad for p in params], params, grad_outputs=us)
        for p in params:
            p.grad = p.grad.detach()  # the graph is not needed any more
        return {p: u * hu for p, u, hu in zip(params, us, products, strict=True)}
