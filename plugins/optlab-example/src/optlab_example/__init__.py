"""An optlab plugin package: the signSGD and Sophia-H optimizers and the batch_loss probe (no
torch import at module level)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from optlab import Params, Plugin, ProbeParams, check_schedule


class SignSGDParams(Params):
    lr: Annotated[float, Field(gt=0)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


def _build(params: SignSGDParams, *, model: Any, **_: Any):
    from optlab_example._optim import SignSGD

    return SignSGD(
        model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )


signsgd = Plugin(
    "signSGD: step along the sign of the (momentum-averaged) gradient", SignSGDParams, _build
)


class SophiaParams(Params):
    lr: Annotated[float, Field(gt=0)] = 1e-4
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.965,
        0.99,
    )
    gamma: Annotated[float, Field(gt=0)] = 0.01
    eps: Annotated[float, Field(gt=0)] = 1e-12
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    every: Annotated[int, Field(ge=1)] = 10
    seed: int = 0


def _build_sophia(params: SophiaParams, *, model: Any, **_: Any):
    from optlab_example._optim import SophiaH

    return SophiaH(model.parameters(), **params.model_dump())


# A Hessian-informed optimizer: it asks the engine for a closure (optlab_closure = True) and,
# every `every` steps, calls closure(create_graph=True) to take Hessian-vector products.
sophia = Plugin(
    "Sophia-H (Liu et al. 2023): momentum over a clipped diagonal-Hessian "
    "preconditioner, estimated by Hutchinson every k steps",
    SophiaParams,
    _build_sophia,
)


def _build_probe(params: ProbeParams, **_: Any):
    from optlab_example._probe import BatchLoss

    return BatchLoss()


# A probe takes the shared schedule keys (epochs / every / first_steps, batch, mode, augment)
# by deriving its params from ProbeParams; check_schedule rejects epochs past the run's end.
batch_loss = Plugin(
    "loss and accuracy on the probe batch", ProbeParams, _build_probe, check=check_schedule
)
