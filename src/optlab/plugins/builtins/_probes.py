"""The built-in probes' measurements (torch). See :mod:`optlab.plugins.builtins.probes`.

A probe object is built once per run, after the model and optimizer (so it sees the initial
weights), and called with a :class:`optlab.training.probing.ProbeContext`. It returns
``{key: value}``, values as 0-d tensors or floats; ``global`` is the whole-model key and
other keys are layer (module) or parameter names.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def layer_params(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Trainable parameters grouped by the module that owns them (``layer1.0.conv1``)."""
    out: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(name.rpartition(".")[0] or name, []).append(p)
    return out


def _norms(tensors_by_layer: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    sq = {k: sum((t.float() ** 2).sum() for t in ts) for k, ts in tensors_by_layer.items()}
    out = {"global": torch.sqrt(sum(sq.values()))}
    out.update({k: torch.sqrt(v) for k, v in sq.items()})
    return out


def _regroup(model: torch.nn.Module, flat: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    out: dict[str, list[torch.Tensor]] = {}
    it = iter(flat)
    for layer, ps in layer_params(model).items():
        out[layer] = [next(it) for _ in ps]
    return out


def batch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).float(), y)


def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for ps in layer_params(model).values() for p in ps]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


class _Probe:
    def __init__(self, params: Any, *, model: torch.nn.Module, optimizer: Any = None, **_: Any):
        self.params, self.optimizer = params, optimizer


class GradNorm(_Probe):
    def __call__(self, ctx: Any) -> dict[str, Any]:
        params = _params(ctx.model)
        grads = torch.autograd.grad(batch_loss(ctx.model, ctx.x, ctx.y), params)
        return _norms(_regroup(ctx.model, list(grads)))


class WeightNorm(_Probe):
    def __call__(self, ctx: Any) -> dict[str, Any]:
        return _norms({k: [p.detach() for p in ps] for k, ps in layer_params(ctx.model).items()})


class DistanceFromInit(_Probe):
    def __init__(self, params: Any, *, model: torch.nn.Module, **kw: Any):
        super().__init__(params, model=model, **kw)
        self.initial = {
            k: [p.detach().clone() for p in ps] for k, ps in layer_params(model).items()
        }

    def __call__(self, ctx: Any) -> dict[str, Any]:
        now = layer_params(ctx.model)
        return _norms(
            {
                k: [p.detach() - p0 for p, p0 in zip(now[k], ps, strict=True)]
                for k, ps in self.initial.items()
            }
        )

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return self.initial

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        for key, saved in state.items():
            for live, value in zip(self.initial[key], saved, strict=True):
                live.copy_(value)


class FullGradNorm(_Probe):
    """|grad of the mean loss over the whole training set|, summed over chunks of ``batch``."""

    def __call__(self, ctx: Any) -> dict[str, Any]:
        params = _params(ctx.model)
        total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        x_all, y_all = ctx.data.x_train, ctx.data.y_train
        n = len(x_all)
        if self.params.shuffle:
            order = torch.randperm(n, generator=ctx.generator, device=ctx.generator.device)
            x_all, y_all = x_all[order.to(x_all.device)], y_all[order.to(y_all.device)]
        for i in range(0, n, self.params.batch):
            x, y = ctx.prepare(x_all[i : i + self.params.batch]), y_all[i : i + self.params.batch]
            loss = F.cross_entropy(ctx.model(x).float(), y, reduction="sum")
            for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
                acc += g
        return {"global": torch.sqrt(sum(((g / n) ** 2).sum() for g in total))}


def _hvp_setup(ctx: Any) -> tuple[list[torch.nn.Parameter], list[torch.Tensor]]:
    params = _params(ctx.model)
    grads = torch.autograd.grad(batch_loss(ctx.model, ctx.x, ctx.y), params, create_graph=True)
    return params, list(grads)


def _hvp(
    params: list[torch.Tensor], grads: list[torch.Tensor], v: list[torch.Tensor]
) -> list[torch.Tensor]:
    return list(torch.autograd.grad(_dot(grads, v), params, retain_graph=True))


class HessianTrace(_Probe):
    """Hutchinson: tr(H) = E[v^T H v] over Rademacher v; the mean of ``vectors`` draws."""

    def __call__(self, ctx: Any) -> dict[str, Any]:
        params, grads = _hvp_setup(ctx)
        total = torch.zeros((), device=ctx.x.device)
        for _ in range(self.params.vectors):
            v = [
                torch.randint(0, 2, p.shape, device=p.device, generator=ctx.generator).to(p.dtype)
                * 2
                - 1
                for p in params
            ]
            total += _dot(v, _hvp(params, grads, v)).detach()
        return {"global": total / self.params.vectors}


class TopEigenvalue(_Probe):
    """Power iteration on Hessian-vector products; the Rayleigh quotient of the last vector
    (the eigenvalue of largest magnitude)."""

    def __call__(self, ctx: Any) -> dict[str, Any]:
        params, grads = _hvp_setup(ctx)
        v = [torch.randn(p.shape, device=p.device, generator=ctx.generator) for p in params]
        value = torch.zeros((), device=ctx.x.device)
        for _ in range(self.params.iterations):
            norm = torch.sqrt(_dot(v, v))
            v = [t / norm for t in v]
            hv = [t.detach() for t in _hvp(params, grads, v)]
            value = _dot(v, hv)
            v = hv
        return {"global": value}


class GradNoiseScale(_Probe):
    """B_simple = tr(Sigma) / |G|^2 from gradients of micro-batches of size b within the probe
    batch of size B (McCandlish et al. 2018, appendix A): with |G_b|^2 the mean squared norm
    of micro-batch gradients and |G_B|^2 that of their mean,
    |G|^2 ~ (B |G_B|^2 - b |G_b|^2) / (B - b), tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)."""

    def __call__(self, ctx: Any) -> dict[str, Any]:
        b = self.params.micro_batch
        m = len(ctx.x) // b
        if m < 2:
            raise ValueError(
                f"grad_noise_scale needs at least two micro-batches of {b} in the "
                f"probe batch of {len(ctx.x)}"
            )
        params = _params(ctx.model)
        mean = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        small_sq = torch.zeros((), device=ctx.x.device)
        for j in range(m):
            sl = slice(j * b, (j + 1) * b)
            grads = torch.autograd.grad(batch_loss(ctx.model, ctx.x[sl], ctx.y[sl]), params)
            small_sq += sum((g.float() ** 2).sum() for g in grads) / m
            for acc, g in zip(mean, grads, strict=True):
                acc += g.float() / m
        big = m * b
        big_sq = sum((g**2).sum() for g in mean)
        grad_sq = (big * big_sq - b * small_sq) / (big - b)
        trace = (small_sq - big_sq) / (1 / b - 1 / big)
        return {"b_simple": trace / grad_sq, "trace_sigma": trace, "grad_sq": grad_sq}


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


class TrustRatio(_Probe):
    """The trust ratio LARS/LAMB applied to each adapted parameter at its last step."""

    def __call__(self, ctx: Any) -> dict[str, Any]:
        names = _param_names(ctx.model)
        return {
            names[id(p)]: st["trust_ratio"]
            for p, st in self.optimizer.state.items()
            if "trust_ratio" in st and id(p) in names
        }


class EffectiveLR(_Probe):
    """Per parameter: the LR in force for its group times its trust ratio (1 without one),
    and that over |w|^2 (``NAME:angular``); ``global``: the first group's LR."""

    def __call__(self, ctx: Any) -> dict[str, Any]:
        names = _param_names(ctx.model)
        out: dict[str, Any] = {"global": float(self.optimizer.param_groups[0]["lr"])}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in names:
                    continue
                ratio = self.optimizer.state.get(p, {}).get("trust_ratio")
                lr = group["lr"] * (ratio if ratio is not None else 1.0)
                out[names[id(p)]] = lr
                out[names[id(p)] + ":angular"] = lr / (p.detach().float() ** 2).sum()
        return out
