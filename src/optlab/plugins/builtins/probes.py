"""Built-in probes: measurements of the model and optimizer taken during training.

A study lists them under ``probes`` in the run config, each a flat table::

    probes = [
      { name = "grad_norm", first_steps = 200 },              # every step of the first 200
      { name = "hessian_trace", every = 5, vectors = 10 },     # after epochs 5, 10, ...
      { name = "full_grad_norm", epochs = "1-20" },            # after each of epochs 1..20
      { name = "weight_norm", epochs = [0, 10, 50] },          # 0 = before training
    ]

Every probe shares the schedule and measurement keys of :class:`ProbeParams`; its own keys
sit beside them. Probes measure in fp32 on a fixed probe batch drawn with their own
generator, restore normalisation statistics afterwards, and never touch ``.grad``: a run
with probes trains exactly like the run without them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from optlab.plugins.plugin import Params, Plugin

_IMPL = "optlab.plugins.builtins._probes"
_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


class ProbeParams(Params):
    """When a probe runs, and on what. Give at most one of epochs / every / first_steps
    (none: after every epoch)."""

    epochs: list[Annotated[int, Field(ge=0)]] | str | None = Field(
        None, description='after these epochs: [0, 5] or "1-10" (0 is before training)'
    )
    every: Annotated[int, Field(ge=1)] | None = Field(None, description="after epochs N, 2N, ...")
    first_steps: Annotated[int, Field(ge=1)] | None = Field(
        None, description="after each of the first K steps"
    )
    batch: Annotated[int, Field(ge=1)] = Field(
        256, description="probe batch size (capped at the training set)"
    )
    mode: Literal["train", "eval"] = Field(
        "train", description="normalisation layers' mode while measuring"
    )
    augment: bool = Field(False, description="apply the run's augmentation to the probe batch")

    @field_validator("epochs")
    @classmethod
    def _range(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = _RANGE.match(v)
            if not m or int(m[1]) > int(m[2]):
                raise ValueError("a range of epochs is written 'FIRST-LAST', such as '1-10'")
        elif isinstance(v, list) and not v:
            raise ValueError("give at least one epoch")
        return v

    @model_validator(mode="after")
    def _one_schedule(self) -> ProbeParams:
        given = [k for k in ("epochs", "every", "first_steps") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of epochs, every, first_steps (given {', '.join(given)})")
        return self

    def epoch_list(self, epochs: int) -> list[int]:
        """The epochs after which the probe runs (0 = before the first step)."""
        if self.first_steps is not None:
            return []
        if isinstance(self.epochs, str):
            first, last = (int(x) for x in _RANGE.match(self.epochs).groups())  # type: ignore
            return list(range(first, last + 1))
        if self.epochs is not None:
            return sorted(set(self.epochs))
        every = self.every or 1
        return list(range(every, epochs + 1, every))


def check_schedule(params: ProbeParams, *, epochs: int, **_: Any) -> None:
    if params.first_steps is not None:
        return
    if params.every is not None and params.every > epochs:
        raise ValueError(
            f"every = {params.every} is beyond the run's {epochs} epochs, so the "
            "probe would never run"
        )
    beyond = [e for e in params.epoch_list(epochs) if e > epochs]
    if beyond:
        raise ValueError(
            f"epoch {beyond[0]} is beyond the run's {epochs} epochs (allowed: 0 to {epochs})"
        )


class HessianTraceParams(ProbeParams):
    vectors: Annotated[int, Field(ge=1)] = Field(
        10, description="Rademacher probe vectors (Hutchinson)"
    )


class TopEigenvalueParams(ProbeParams):
    iterations: Annotated[int, Field(ge=1)] = Field(
        20, description="power iterations (Hessian-vector products)"
    )


class NoiseScaleParams(ProbeParams):
    micro_batch: Annotated[int, Field(ge=1)] = Field(
        16, description="gradients are taken per micro-batch of this size"
    )


def _check_noise(params: NoiseScaleParams, *, train_size: int | None = None, **facts: Any) -> None:
    check_schedule(params, **facts)
    batch = min(params.batch, train_size or params.batch)
    if batch < 2 * params.micro_batch:
        raise ValueError(
            f"batch = {batch} holds fewer than two micro-batches of "
            f"{params.micro_batch}; raise batch or lower micro_batch"
        )


class FullGradParams(ProbeParams):
    """``batch`` is the chunk size: the whole training set is always used. In train mode
    (the default) normalisation layers use each chunk's statistics, so the chunk size and
    order change the value: seed 004's reference takes shuffled chunks of 100."""

    batch: Annotated[int, Field(ge=1)] = Field(
        1024, description="chunk size (the whole training set is used)"
    )
    shuffle: bool = Field(
        False,
        description="chunks in a shuffled order (the probe's own generator), not file order",
    )

    @model_serializer(mode="wrap")
    def _absent_when_off(self, handler: Any) -> Any:
        # Absent from the resolved config unless set, so runs from before it keep their ids.
        data = handler(self)
        if not self.shuffle and isinstance(data, dict):
            data.pop("shuffle", None)
        return data


_TRUST_OPTIMIZERS = ("lars", "lamb")


def _check_trust(params: ProbeParams, *, optimizer: str | None = None, **facts: Any) -> None:
    check_schedule(params, **facts)
    if optimizer is not None and optimizer not in _TRUST_OPTIMIZERS:
        raise ValueError(
            f"trust_ratio needs a layer-wise optimizer "
            f"({', '.join(_TRUST_OPTIMIZERS)}); this run uses {optimizer}"
        )


def _probe(text: str, params: type[ProbeParams], build: str, check: Any = check_schedule) -> Plugin:
    return Plugin(text, params, f"{_IMPL}:{build}", check=check)


grad_norm = _probe(
    "Gradient norm on the probe batch: global and per layer.", ProbeParams, "GradNorm"
)
weight_norm = _probe("Weight norm: global and per layer.", ProbeParams, "WeightNorm")
distance_from_init = _probe(
    "Distance of the weights from their initial values: global and per layer.",
    ProbeParams,
    "DistanceFromInit",
)
full_grad_norm = _probe(
    "Gradient norm of the loss over the whole training set (seed 004's "
    "norm.csv); batch is the chunk size; augment = true measures the "
    "training set as augmented for training (the probe's own draws), as "
    "the seed's reference code does.",
    FullGradParams,
    "FullGradNorm",
)
hessian_trace = _probe(
    "Hessian trace on the probe batch, Hutchinson's estimator with `vectors` Rademacher vectors.",
    HessianTraceParams,
    "HessianTrace",
)
top_eigenvalue = _probe(
    "Hessian eigenvalue of largest magnitude, with its sign, on the probe "
    "batch, by power iteration on Hessian-vector products (negative when the "
    "most negative curvature is the largest in size).",
    TopEigenvalueParams,
    "TopEigenvalue",
)
grad_noise_scale = _probe(
    "Simple gradient noise scale B_simple = tr(Sigma)/|G|^2 "
    "(McCandlish et al. 2018), from per-micro-batch gradients.",
    NoiseScaleParams,
    "GradNoiseScale",
    check=_check_noise,
)
trust_ratio = _probe(
    "Layer-wise trust ratio of the last LARS/LAMB step, per layer.",
    ProbeParams,
    "TrustRatio",
    check=_check_trust,
)
effective_lr = _probe(
    "Learning rate each layer gets (group LR x trust ratio), and that "
    "over |w|^2 (the angular rate of scale-invariant layers).",
    ProbeParams,
    "EffectiveLR",
)
