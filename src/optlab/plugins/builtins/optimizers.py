"""Built-in optimizers: SGD, Adam, AdamW (torch.optim), and LARS, LAMB, Lion, SAM and
schedule-free AdamW (optlab's own).

What the engine does with an optimizer: it overwrites every param group's ``lr`` before each
step (the base LR, read from the groups when built, times the schedule); it calls
``step(closure)`` when ``optimizer.optlab_closure`` is true (see ``stepping.step_optimizer``)
and ``step()`` otherwise; and it calls ``optimizer.eval()`` / ``optimizer.train()``, when
the optimizer has them, around evaluation (``stepping.weights_for``).

Every optimizer can keep biases and normalisation parameters (every parameter with fewer
than two dimensions) out of weight decay: ``exclude_bias_norm``. For LARS and LAMB that
option (on by default) also keeps them out of the layer-wise adaptation.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationError, model_validator

from optlab.errors import ConfigError
from optlab.plugins.plugin import Params, Plugin
from optlab.plugins.registry import default_registry

PositiveLR = Annotated[float, Field(gt=0)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
Decay = Annotated[float, Field(ge=0)]
Eps = Annotated[float, Field(ge=0)]


# Parameter descriptions, as `optlab plugins` shows them.
_LR = "base learning rate (the LR schedule multiplies it every step)"
_MOMENTUM = "momentum coefficient"
_DAMPENING = "dampening of the momentum buffer's new gradient"
_NESTEROV = "Nesterov momentum"
_L2 = "L2 weight decay, added to the gradient"
_EXCLUDE = "keep biases and normalisation parameters (fewer than 2 dimensions) out of weight decay"
_BETAS = "coefficients of the first and second moment averages"
_EPS = "added to the denominator for stability"
_DECOUPLED = "decoupled weight decay"
_WD_IN_RATIO = "weight decay, inside the trust ratio"
_TRUST = "scale of the layer-wise trust ratio"
_DECOUPLED_IN_RATIO = "decoupled weight decay, inside the trust ratio"
_RHO = "radius of the neighbourhood in which SAM looks for the worst point"
_BASE = "the optimizer SAM wraps; its own keys go beside rho"
_DECOUPLED_AT_Y = "decoupled weight decay, taken at the training iterate y"
_WARMUP = "steps of linear LR warmup inside the optimizer"
_POWER = "power of the LR in the weights of the iterate average"


class SGDParams(Params):
    lr: PositiveLR = Field(0.1, description=_LR)
    momentum: Momentum = Field(0.0, description=_MOMENTUM)
    dampening: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description=_DAMPENING)
    nesterov: bool = Field(False, description=_NESTEROV)
    weight_decay: Decay = Field(0.0, description=_L2)
    exclude_bias_norm: bool = Field(False, description=_EXCLUDE)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SGDParams:
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov = true needs momentum > 0 and dampening = 0")
        return self


class AdamParams(Params):
    lr: PositiveLR = Field(1e-3, description=_LR)
    betas: tuple[Momentum, Momentum] = Field((0.9, 0.999), description=_BETAS)
    eps: Annotated[float, Field(gt=0)] = Field(1e-8, description=_EPS)
    weight_decay: Decay = Field(0.0, description=_L2)
    exclude_bias_norm: bool = Field(False, description=_EXCLUDE)


class AdamWParams(AdamParams):
    weight_decay: Decay = Field(0.01, description=_DECOUPLED)


class LARSParams(Params):
    lr: PositiveLR = Field(0.1, description=_LR)
    momentum: Momentum = Field(0.9, description=_MOMENTUM)
    weight_decay: Decay = Field(1e-4, description=_WD_IN_RATIO)
    trust_coefficient: Annotated[float, Field(gt=0)] = Field(0.001, description=_TRUST)
    eps: Eps = Field(1e-8, description=_EPS)
    exclude_bias_norm: bool = Field(True, description=_EXCLUDE)


class LAMBParams(Params):
    lr: PositiveLR = Field(1e-3, description=_LR)
    betas: tuple[Momentum, Momentum] = Field((0.9, 0.999), description=_BETAS)
    eps: Annotated[float, Field(gt=0)] = Field(1e-6, description=_EPS)
    weight_decay: Decay = Field(0.01, description=_DECOUPLED_IN_RATIO)
    trust_coefficient: Annotated[float, Field(gt=0)] = Field(1.0, description=_TRUST)
    exclude_bias_norm: bool = Field(True, description=_EXCLUDE)


class LionParams(Params):
    # The paper's defaults; its advice is an LR 3-10x smaller and a decay 3-10x larger than
    # AdamW's, since the sign makes every coordinate's step as large as the LR.
    lr: PositiveLR = Field(1e-4, description=_LR)
    betas: tuple[Momentum, Momentum] = Field((0.9, 0.99), description=_BETAS)
    weight_decay: Decay = Field(0.0, description=_DECOUPLED)
    exclude_bias_norm: bool = Field(False, description=_EXCLUDE)


class SAMParams(Params):
    """``rho`` and ``base``; every other key is the base optimizer's (``lr``, ``momentum``,
    ...), so a grid over ``optimizer.lr`` reads as for any optimizer."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    rho: Annotated[float, Field(gt=0)] = Field(0.05, description=_RHO)
    base: str = Field("sgd", description=_BASE)

    @model_validator(mode="after")
    def _base_takes_the_rest(self) -> SAMParams:

        if self.base == "sam":
            raise ValueError('base = "sam": SAM wraps another optimizer, not itself')
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
    lr: PositiveLR = Field(0.0025, description=_LR)
    betas: tuple[Annotated[float, Field(gt=0, lt=1)], Momentum] = Field(
        (0.9, 0.999), description=_BETAS
    )
    eps: Annotated[float, Field(gt=0)] = Field(1e-8, description=_EPS)
    weight_decay: Decay = Field(0.0, description=_DECOUPLED_AT_Y)
    warmup_steps: Annotated[int, Field(ge=0)] = Field(0, description=_WARMUP)
    weight_lr_power: Annotated[float, Field(ge=0)] = Field(2.0, description=_POWER)
    exclude_bias_norm: bool = Field(False, description=_EXCLUDE)


def param_groups(
    model: Any, weight_decay: float, exclude_bias_norm: bool, layerwise: bool = False
) -> list[dict]:
    """One group, or two: weights with decay, and biases/norm parameters without (and, for
    the ``layerwise`` optimizers, without adaptation: ``adapt = False``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bias_norm:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if rest:
        groups.append(
            {"params": rest, "weight_decay": 0.0, **({"adapt": False} if layerwise else {})}
        )
    return groups


def _torch(name: str):
    def build(params: Params, *, model: Any, **_: Any):
        import torch  # torch: only where a run trains; the readers never import it

        options = params.model_dump(exclude={"exclude_bias_norm"})
        groups = param_groups(model, params.weight_decay, params.exclude_bias_norm)
        return getattr(torch.optim, name)(groups, **options)

    return build


sgd = Plugin(
    "stochastic gradient descent with momentum (dampening, Nesterov) and L2 weight decay",
    SGDParams,
    _torch("SGD"),
)
adam = Plugin(
    "Adam (Kingma & Ba) with L2 weight decay added to the gradient", AdamParams, _torch("Adam")
)
adamw = Plugin(
    "Adam with decoupled weight decay (Loshchilov & Hutter)", AdamWParams, _torch("AdamW")
)
lars = Plugin(
    "LARS (You et al. 2017): SGD with momentum and a layer-wise trust ratio",
    LARSParams,
    "optlab.plugins.builtins._optim:build_lars",
)
lamb = Plugin(
    "LAMB (You et al. 2019): Adam moments with a layer-wise trust ratio",
    LAMBParams,
    "optlab.plugins.builtins._optim:build_lamb",
)
lion = Plugin(
    "Lion (Chen et al. 2023): the sign of interpolated momentum, with decoupled weight decay",
    LionParams,
    "optlab.plugins.builtins._optim:build_lion",
)
sam = Plugin(
    "SAM (Foret et al. 2021): a base optimizer's step at the gradient of the worst "
    "point within rho; two gradient evaluations a step",
    SAMParams,
    "optlab.plugins.builtins._optim:build_sam",
)
schedulefree_adamw = Plugin(
    "schedule-free AdamW (Defazio et al. 2024): trains on an interpolation, evaluated on "
    "the averaged iterate; use a constant LR schedule",
    ScheduleFreeAdamWParams,
    "optlab.plugins.builtins._optim:build_schedulefree_adamw",
)
