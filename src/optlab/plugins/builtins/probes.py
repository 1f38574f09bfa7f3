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

from typing import Annotated, Any

from pydantic import Field, model_serializer

from optlab.plugins.plugin import Plugin
from optlab.plugins.probe_params import ProbeParams, check_schedule

_IMPL = "optlab.plugins.builtins._probes"


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
