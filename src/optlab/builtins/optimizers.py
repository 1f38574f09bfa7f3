"""Built-in optimizers: SGD, Adam, AdamW (torch.optim), and LARS, LAMB, Lion, SAM and
schedule-free AdamW (optlab's own).

What the engine does with an optimizer: it overwrites every param group's ``lr`` before each
step (the base LR, read from the groups when built, times the schedule); it calls
``step(closure)`` when ``optimizer.optlab_closure`` is true (see ``engine.step_optimizer``)
and ``step()`` otherwise; and it calls ``optimizer.eval()`` / ``optimizer.train()``, when
the optimizer has them, around evaluation (``engine.weights_for``).

Every optimizer can keep biases and normalisation parameters (every parameter with fewer
than two dimensions) out of weight decay: ``exclude_bias_norm``. For LARS and LAMB that
option (on by default) also keeps them out of the layer-wise adaptation.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from optlab.plugin import Params, Plugin

PositiveLR = Annotated[float, Field(gt=0)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
Decay = Annotated[float, Field(ge=0)]
Eps = Annotated[float, Field(ge=0)]


class SGDParams(Params):
    lr: PositiveLR = 0.1
    momentum: Momentum = 0.0
    dampening: Annotated[float, Field(ge=0, le=1)] = 0.0
    nesterov: bool = False
    weight_decay: Decay = 0.0
    exclude_bias_norm: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov = true needs momentum > 0 and dampening = 0")
        return self


class AdamParams(Params):
    lr: PositiveLR = 1e-3
    betas: tuple[Momentum, Momentum] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Decay = 0.0
    exclude_bias_norm: bool = False


class AdamWParams(AdamParams):
    weight_decay: Decay = 0.01


class LARSParams(Params):
    lr: PositiveLR = 0.1
    momentum: Momentum = 0.9
    weight_decay: Decay = 1e-4
    trust_coefficient: Annotated[float, Field(gt=0)] = 0.001
    eps: Eps = 1e-8
    exclude_bias_norm: bool = True


class LAMBParams(Params):
    lr: PositiveLR = 1e-3
    betas: tuple[Momentum, Momentum] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-6
    weight_decay: Decay = 0.01
    trust_coefficient: Annotated[float, Field(gt=0)] = 1.0
    exclude_bias_norm: bool = True


class LionParams(Params):
    # The paper's defaults; its advice is an LR 3-10x smaller and a decay 3-10x larger than
    # AdamW's, since the sign makes every coordinate's step as large as the LR.
    lr: PositiveLR = 1e-4
    betas: tuple[Momentum, Momentum] = (0.9, 0.99)
    weight_decay: Decay = 0.0
    exclude_bias_norm: bool = False


class SAMParams(Params):
    """``rho`` and ``base``; every other key is the base optimizer's (``lr``, ``momentum``,
    ...), so a grid over ``optimizer.lr`` reads as for any optimizer."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    rho: Annotated[float, Field(gt=0)] = 0.05
    base: str = "sgd"

    @model_validator(mode="after")
    def _base_takes_the_rest(self) -> SAMParams:
        from pydantic import ValidationError

        from optlab.errors import ConfigError
        from optlab.registry import default_registry

        if self.base == "sam":
            raise ValueError("base = \"sam\": SAM wraps another optimizer, not itself")
        try:
            default_registry().get("optimizer", self.base).params(**(self.model_extra or {}))
        except ConfigError as e:
            raise ValueError(f"base: {e}") from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ValueError(f"base {self.base}: {where}: {first['msg']}") from None
        return self


class ScheduleFreeAdamWParams(Params):
    # The reference implementation's defaults (Defazio et al. 2024).
    lr: PositiveLR = 0.0025
    betas: tuple[Annotated[float, Field(gt=0, lt=1)], Momentum] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Decay = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    weight_lr_power: Annotated[float, Field(ge=0)] = 2.0
    exclude_bias_norm: bool = False


def param_groups(model: Any, weight_decay: float, exclude_bias_norm: bool) -> list[dict]:
    """One group, or two: weights with decay, and biases/norm parameters without (and, for
    the layer-wise optimizers, without adaptation: ``adapt = False``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bias_norm:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0, "adapt": False})
    return groups


def _torch(name: str):
    def build(params: Params, *, model: Any, **_: Any):
        import torch

        options = params.model_dump(exclude={"exclude_bias_norm"})
        groups = param_groups(model, params.weight_decay, params.exclude_bias_norm)
        for g in groups:
            g.pop("adapt", None)
        return getattr(torch.optim, name)(groups, **options)

    return build


sgd = Plugin("stochastic gradient descent with momentum (dampening, Nesterov) and L2 weight "
             "decay", SGDParams, _torch("SGD"))
adam = Plugin("Adam (Kingma & Ba) with L2 weight decay added to the gradient", AdamParams,
              _torch("Adam"))
adamw = Plugin("Adam with decoupled weight decay (Loshchilov & Hutter)", AdamWParams,
               _torch("AdamW"))
lars = Plugin("LARS (You et al. 2017): SGD with momentum and a layer-wise trust ratio",
              LARSParams, "optlab.builtins._optim:build_lars")
lamb = Plugin("LAMB (You et al. 2019): Adam moments with a layer-wise trust ratio", LAMBParams,
              "optlab.builtins._optim:build_lamb")
lion = Plugin("Lion (Chen et al. 2023): the sign of interpolated momentum, with decoupled "
              "weight decay", LionParams, "optlab.builtins._optim:build_lion")
sam = Plugin("SAM (Foret et al. 2021): a base optimizer's step at the gradient of the worst "
             "point within rho; two gradient evaluations a step", SAMParams,
             "optlab.builtins._optim:build_sam")
schedulefree_adamw = Plugin(
    "schedule-free AdamW (Defazio et al. 2024): trains on an interpolation, evaluated on "
    "the averaged iterate; use a constant LR schedule", ScheduleFreeAdamWParams,
    "optlab.builtins._optim:build_schedulefree_adamw")
