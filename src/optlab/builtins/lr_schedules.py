"""Built-in learning-rate schedules: a factor of the optimizer's base LR.

A schedule's build returns ``factor(t, dt)``: ``t`` is the training progress in epochs
at the start of a step (epoch + step/steps_per_epoch), ``dt`` one step in epochs. Linear
warmup counts the step itself, so its first step already moves (factor dt/warmup) and
the step that ends the warmup runs at the full rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from optlab.plugin import Params, Plugin

Factor = Callable[[float, float], float]


class ConstantParams(Params):
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0


class CosineParams(Params):
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0
    min_factor: Annotated[float, Field(ge=0, le=1)] = 0.0


def _warmup(warmup: float, t: float, dt: float) -> float | None:
    if warmup > 0 and t < warmup:
        return min(1.0, (t + dt) / warmup)
    return None


def _build_constant(params: ConstantParams, *, epochs: int, **_: Any) -> Factor:
    def factor(t: float, dt: float) -> float:
        w = _warmup(params.warmup_epochs, t, dt)
        return 1.0 if w is None else w

    return factor


def _build_cosine(params: CosineParams, *, epochs: int, **_: Any) -> Factor:
    span = max(epochs - params.warmup_epochs, 1e-12)
    lo = params.min_factor

    def factor(t: float, dt: float) -> float:
        w = _warmup(params.warmup_epochs, t, dt)
        if w is not None:
            return w
        frac = min(max((t - params.warmup_epochs) / span, 0.0), 1.0)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))

    return factor


constant = Plugin("constant learning rate, with optional linear warmup", ConstantParams,
                  _build_constant)
cosine = Plugin("cosine decay to min_factor over the run, after optional linear warmup",
                CosineParams, _build_cosine)
