"""What every probe's params share: when it runs (epochs, every, first_steps) and on what
batch. Part of the contract (re-exported by ``optlab``): a probe's params derive from
:class:`ProbeParams`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from optlab.plugins.plugin import Params

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

    def runs_at(self, epoch: int) -> bool:
        """Whether the probe runs after ``epoch`` (0 = before the first step). Asked per
        epoch, never listed: a run may have a billion epochs on paper."""
        if self.first_steps is not None:
            return False
        if isinstance(self.epochs, str):
            first, last = (int(x) for x in _RANGE.match(self.epochs).groups())  # type: ignore
            return first <= epoch <= last
        if self.epochs is not None:
            return epoch in self.epochs
        every = self.every or 1
        return epoch >= every and epoch % every == 0

    def last_epoch(self) -> int | None:
        """The last epoch it names, when it names epochs (a list or a range)."""
        if isinstance(self.epochs, str):
            return int(_RANGE.match(self.epochs).group(2))  # type: ignore[union-attr]
        return max(self.epochs) if self.epochs else None


def check_schedule(params: ProbeParams, *, epochs: int, **_: Any) -> None:
    if params.first_steps is not None:
        return
    if params.every is not None and params.every > epochs:
        raise ValueError(
            f"every = {params.every} is beyond the run's {epochs} epochs, so the "
            "probe would never run"
        )
    if isinstance(params.epochs, list):
        beyond = sorted(e for e in params.epochs if e > epochs)
    else:
        last = params.last_epoch()
        first = int(_RANGE.match(params.epochs).group(1)) if params.epochs else 0  # type: ignore
        beyond = [max(first, epochs + 1)] if last is not None and last > epochs else []
    if beyond:
        raise ValueError(
            f"epoch {beyond[0]} is beyond the run's {epochs} epochs (allowed: 0 to {epochs})"
        )
