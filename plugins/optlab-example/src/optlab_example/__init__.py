"""An optlab plugin package: the signSGD optimizer and the batch_loss probe (no torch import
at module level)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from optlab.builtins.probes import ProbeParams, check_schedule
from optlab.plugin import Params, Plugin


class SignSGDParams(Params):
    lr: Annotated[float, Field(gt=0)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0


def _build(params: SignSGDParams, *, model: Any, **_: Any):
    from optlab_example._optim import SignSGD

    return SignSGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                   weight_decay=params.weight_decay)


signsgd = Plugin("signSGD: step along the sign of the (momentum-averaged) gradient",
                 SignSGDParams, _build)


def _build_probe(params: ProbeParams, **_: Any):
    from optlab_example._probe import BatchLoss

    return BatchLoss()


# A probe takes the shared schedule keys (epochs / every / first_steps, batch, mode, augment)
# by deriving its params from ProbeParams; check_schedule rejects epochs past the run's end.
batch_loss = Plugin("loss and accuracy on the probe batch", ProbeParams, _build_probe,
                    check=check_schedule)
