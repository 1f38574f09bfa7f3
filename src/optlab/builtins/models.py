"""Built-in models: an MLP for any input shape and a small CNN for images."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from optlab.plugin import Params, Plugin


class MLPParams(Params):
    hidden: list[Annotated[int, Field(ge=1)]] = [128]


class CNNParams(Params):
    channels: list[Annotated[int, Field(ge=1)]] = Field(default=[32, 64], min_length=1)
    batch_norm: bool = True


mlp = Plugin(
    "multi-layer perceptron on the flattened input; hidden = [] is logistic regression",
    MLPParams,
    "optlab.builtins._nets:build_mlp",
)

cnn = Plugin(
    "small conv net: per stage conv3x3 (+BN) + ReLU + 2x2 max-pool, then global pool + linear",
    CNNParams,
    "optlab.builtins._nets:build_cnn",
)
