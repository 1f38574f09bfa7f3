"""Built-in optimizers: SGD (with momentum, Nesterov) and AdamW, from torch.optim."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from optlab.plugin import Params, Plugin

PositiveLR = Annotated[float, Field(gt=0)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
Decay = Annotated[float, Field(ge=0)]


class SGDParams(Params):
    lr: PositiveLR = 0.1
    momentum: Momentum = 0.0
    nesterov: bool = False
    weight_decay: Decay = 0.0

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov = true needs momentum > 0")
        return self


class AdamWParams(Params):
    lr: PositiveLR = 1e-3
    betas: tuple[Momentum, Momentum] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Decay = 0.01


def _build_sgd(params: SGDParams, *, model: Any, **_: Any):
    import torch

    return torch.optim.SGD(
        model.parameters(),
        lr=params.lr,
        momentum=params.momentum,
        nesterov=params.nesterov,
        weight_decay=params.weight_decay,
    )


def _build_adamw(params: AdamWParams, *, model: Any, **_: Any):
    import torch

    return torch.optim.AdamW(
        model.parameters(),
        lr=params.lr,
        betas=params.betas,
        eps=params.eps,
        weight_decay=params.weight_decay,
    )


sgd = Plugin("stochastic gradient descent with momentum and L2 weight decay", SGDParams, _build_sgd)
adamw = Plugin("Adam with decoupled weight decay (Loshchilov & Hutter)", AdamWParams, _build_adamw)
