"""Built-in batch-size schedules: ``build`` returns ``batch_size(epoch) -> int``.

Seed 004's growth schedules raise the batch size every ``incr_interval`` epochs, with
m = epoch // incr_interval: ``linear_growth``: batch_size + coefficient * m;
``exp_growth``: ceil(batch_size * rate ** m); either stops at ``max_batch_size`` when given
(seed 004's reference code caps its batch at 2048, ``MAX_BS``). A schedule that would grow
the batch past the training set is rejected when the study is loaded; a constant batch larger
than the training set is capped to it (full-batch training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from optlab.plugins.plugin import Params, Plugin

Size = Annotated[int, Field(ge=1)]


class ConstantParams(Params):
    batch_size: Size = Field(128, description="examples per step")


class LinearGrowthParams(Params):
    batch_size: Size = Field(16, description="batch size at the start")
    incr_interval: Annotated[int, Field(ge=1)] = Field(20, description="epochs between increases")
    coefficient: Size = Field(16, description="added to the batch size every incr_interval epochs")
    max_batch_size: Size | None = Field(
        None, description="the batch grows no further (none: no cap)"
    )


class ExpGrowthParams(Params):
    batch_size: Size = Field(16, description="batch size at the start")
    incr_interval: Annotated[int, Field(ge=1)] = Field(20, description="epochs between increases")
    rate: Annotated[float, Field(gt=1)] = Field(
        2.0, description="factor of the batch size every incr_interval epochs"
    )
    max_batch_size: Size | None = Field(
        None, description="the batch grows no further (none: no cap)"
    )


class ListParams(Params):
    sizes: list[Size] = Field(
        default=[128], min_length=1, description="a batch size per epoch; the last one holds after"
    )


def _constant(p: ConstantParams) -> Callable[[int], int]:
    return lambda epoch: p.batch_size


def _capped(size: int, cap: int | None) -> int:
    return size if cap is None else min(size, cap)


def _linear_growth(p: LinearGrowthParams) -> Callable[[int], int]:
    return lambda epoch: _capped(
        p.batch_size + p.coefficient * (epoch // p.incr_interval), p.max_batch_size
    )


def _exp_growth(p: ExpGrowthParams) -> Callable[[int], int]:
    return lambda epoch: _capped(
        math.ceil(p.batch_size * p.rate ** (epoch // p.incr_interval) - 1e-9), p.max_batch_size
    )


def _list(p: ListParams) -> Callable[[int], int]:
    return lambda epoch: p.sizes[min(epoch, len(p.sizes) - 1)]


def _builder(make: Callable[[Any], Callable[[int], int]], grows: bool = True):
    def build(params: Any, **_: Any) -> Callable[[int], int]:
        return make(params)

    def check(params: Any, *, epochs: int, train_size: int | None = None, **_: Any) -> None:
        if train_size is None or not grows:
            return  # a constant batch beyond the training set is full-batch training
        at = make(params)
        cap = getattr(params, "max_batch_size", None)
        # The size changes only every incr_interval epochs (a list: in its first epochs), so
        # only those are looked at: a run may have a billion epochs on paper.
        step = getattr(params, "incr_interval", 1)
        if isinstance(params, ListParams):  # its last size holds after its list
            epochs = min(epochs, len(params.sizes))
        for epoch in range(0, epochs, step):
            size = at(epoch)
            if size > train_size:
                raise ValueError(
                    f"the batch grows to {size} in epoch {epoch + 1}, past "
                    f"the {train_size} training examples"
                )
            if cap is not None and size >= cap:
                break  # growth schedules only grow: it stays at the cap from here

    return build, check


def _plugin(text: str, params: type[Params], make: Any, grows: bool = True) -> Plugin:
    build, check = _builder(make, grows)
    return Plugin(text, params, build, check=check)


constant = _plugin(
    "the same batch size every epoch (capped at the training set size)",
    ConstantParams,
    _constant,
    grows=False,
)
linear_growth = _plugin(
    "seed 004: batch_size + coefficient * (epoch // incr_interval), at most max_batch_size",
    LinearGrowthParams,
    _linear_growth,
)
exp_growth = _plugin(
    "seed 004: batch_size * rate ** (epoch // incr_interval), at most max_batch_size",
    ExpGrowthParams,
    _exp_growth,
)
list_ = _plugin("an explicit batch size per epoch; the last one holds", ListParams, _list)
