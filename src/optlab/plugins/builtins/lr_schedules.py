"""Built-in learning-rate schedules: a factor of the optimizer's base LR.

A schedule's build returns ``factor(t, dt, step)``: ``t`` is the training progress in
epochs at the start of a step (epoch + i/steps_per_epoch), ``dt`` one step in epochs and
``step`` the optimizer steps taken before this one. Linear warmup, in epochs or in steps,
counts the step itself: its first step already moves and the step that ends it runs at the
full rate. After an epoch warmup the decay spans the remaining epochs; a step warmup
multiplies the decay, which then spans the whole run.

Seed 004's growth schedules raise the LR every ``incr_interval`` epochs:
``linear_growth``: 1 + coefficient * m, ``exp_growth``: rate ** m, with
m = epoch // incr_interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, model_validator

from optlab.plugins.plugin import Params, Plugin

Factor = Callable[[float, float, int], float]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Warmup(Params):
    warmup_epochs: Annotated[float, Field(ge=0)] = Field(
        0.0, description="epochs of linear warmup from 0 (fractions allowed)"
    )
    warmup_steps: Annotated[int, Field(ge=0)] = Field(
        0, description="steps of linear warmup from 0 (multiplies the schedule)"
    )

    @model_validator(mode="after")
    def _one_warmup(self) -> Warmup:
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError("give warmup_epochs or warmup_steps, not both")
        return self


class ConstantParams(Warmup):
    pass


class StepParams(Warmup):
    step_size: Annotated[int, Field(ge=1)] = Field(30, description="epochs between decays")
    gamma: Annotated[float, Field(gt=0, le=1)] = Field(0.1, description="factor of each decay")


class MultiStepParams(Warmup):
    milestones: list[Annotated[int, Field(ge=1)]] = Field(
        [30, 60, 90], description="epochs at which the LR decays"
    )
    gamma: Annotated[float, Field(gt=0, le=1)] = Field(0.1, description="factor of each decay")

    @model_validator(mode="after")
    def _increasing(self) -> MultiStepParams:
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError("milestones must increase")
        return self


class CosineParams(Warmup):
    min_factor: Fraction = Field(0.0, description="the factor at the cosine's minimum")
    # PyTorch's T_max: the cosine reaches min_factor t_max epochs after the start and, when
    # the run is longer, rises again (period 2 * t_max). Default: the run's length.
    t_max: Annotated[float, Field(gt=0)] | None = Field(
        None, description="PyTorch's T_max: epochs to the minimum (default: the run's length)"
    )

    @model_validator(mode="after")
    def _after_warmup(self) -> CosineParams:
        if self.t_max is not None and self.t_max <= self.warmup_epochs:
            raise ValueError(
                f"t_max = {self.t_max:g} must be longer than the warmup "
                f"({self.warmup_epochs:g} epochs)"
            )
        return self


class LinearParams(Warmup):
    end_factor: Fraction = Field(0.0, description="the factor at the end of the run")


class PolyParams(Warmup):
    power: Annotated[float, Field(gt=0)] = Field(2.0, description="power of the polynomial decay")
    end_factor: Fraction = Field(0.0, description="the factor at the end of the run")


class LinearGrowthParams(Warmup):
    incr_interval: Annotated[int, Field(ge=1)] = Field(20, description="epochs between increases")
    coefficient: Annotated[float, Field(gt=0)] = Field(
        1.0, description="added to the factor every incr_interval epochs"
    )


class ExpGrowthParams(Warmup):
    incr_interval: Annotated[int, Field(ge=1)] = Field(20, description="epochs between increases")
    rate: Annotated[float, Field(gt=0)] = Field(
        1.4, description="factor of the LR every incr_interval epochs"
    )


def _with_warmup(
    params: Warmup,
    epochs: int,
    shape: Callable[[float], float],
    by_epoch: bool = False,
    span_end: float | None = None,
) -> Factor:
    """``shape(x)``: the factor at x in [0, 1] of the decay span (or at the epoch index when
    ``by_epoch``), combined with the warmup. The span ends with the run, or at ``span_end``
    epochs, and then x goes on past 1 (a cosine's second half-period)."""
    w = params.warmup_epochs
    span = max((span_end if span_end is not None else epochs) - w, 1e-12)
    top = math.inf if span_end is not None else 1.0

    def factor(t: float, dt: float, step: int) -> float:
        if w and t < w:
            return min(1.0, (t + dt) / w)
        x = math.floor(t + 1e-9) if by_epoch else min(max((t - w) / span, 0.0), top)
        value = shape(x)
        if params.warmup_steps and step < params.warmup_steps:
            value *= (step + 1) / params.warmup_steps
        return value

    return factor


def _constant(p: ConstantParams, *, epochs: int, **_: Any) -> Factor:
    return _with_warmup(p, epochs, lambda x: 1.0)


def _step(p: StepParams, *, epochs: int, **_: Any) -> Factor:
    return _with_warmup(p, epochs, lambda e: p.gamma ** (e // p.step_size), by_epoch=True)


def _multistep(p: MultiStepParams, *, epochs: int, **_: Any) -> Factor:
    return _with_warmup(
        p, epochs, lambda e: p.gamma ** sum(e >= m for m in p.milestones), by_epoch=True
    )


def _cosine(p: CosineParams, *, epochs: int, **_: Any) -> Factor:
    lo = p.min_factor
    return _with_warmup(
        p, epochs, lambda x: lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * x)), span_end=p.t_max
    )


def _linear(p: LinearParams, *, epochs: int, **_: Any) -> Factor:
    return _with_warmup(p, epochs, lambda x: 1 - (1 - p.end_factor) * x)


def _poly(p: PolyParams, *, epochs: int, **_: Any) -> Factor:
    return _with_warmup(p, epochs, lambda x: p.end_factor + (1 - p.end_factor) * (1 - x) ** p.power)


def _linear_growth(p: LinearGrowthParams, *, epochs: int, **_: Any) -> Factor:
    return _with_warmup(
        p, epochs, lambda e: 1 + p.coefficient * (e // p.incr_interval), by_epoch=True
    )


def _exp_growth(p: ExpGrowthParams, *, epochs: int, **_: Any) -> Factor:
    return _with_warmup(p, epochs, lambda e: p.rate ** (e // p.incr_interval), by_epoch=True)


def _plugin(text: str, params: type[Warmup], build: Any) -> Plugin:
    return Plugin(text, params, build)


constant = _plugin("constant learning rate", ConstantParams, _constant)
step = _plugin("multiply by gamma every step_size epochs", StepParams, _step)
multistep = _plugin("multiply by gamma at each milestone epoch", MultiStepParams, _multistep)
cosine = _plugin(
    "cosine decay to min_factor over the run, or over t_max epochs (PyTorch's "
    "T_max: rising again after)",
    CosineParams,
    _cosine,
)
linear = _plugin("linear decay to end_factor over the run", LinearParams, _linear)
poly = _plugin("polynomial decay (1 - x) ** power to end_factor over the run", PolyParams, _poly)
linear_growth = _plugin(
    "seed 004: factor 1 + coefficient * (epoch // incr_interval)",
    LinearGrowthParams,
    _linear_growth,
)
exp_growth = _plugin(
    "seed 004: factor rate ** (epoch // incr_interval)", ExpGrowthParams, _exp_growth
)
