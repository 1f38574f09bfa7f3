"""Built-in batch-size schedules: ``build`` returns ``batch_size(epoch) -> int``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from optlab.plugin import Params, Plugin


class ConstantParams(Params):
    batch_size: Annotated[int, Field(ge=1)] = 128


def _build_constant(params: ConstantParams, **_: Any):
    return lambda epoch: params.batch_size


constant = Plugin("the same batch size every epoch", ConstantParams, _build_constant)
