"""Built-in models: an MLP for any input shape and a small CNN for images."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from optlab.plugins.plugin import Params, Plugin


class MLPParams(Params):
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        [128], description="widths of the hidden layers ([] is logistic regression)"
    )


class CNNParams(Params):
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        default=[32, 64], min_length=1, description="channels of each convolution block"
    )
    batch_norm: bool = Field(True, description="batch normalisation after each convolution")


mlp = Plugin(
    "multi-layer perceptron on the flattened input; hidden = [] is logistic regression",
    MLPParams,
    "optlab.plugins.builtins._nets:build_mlp",
)

cnn = Plugin(
    "small conv net: per stage conv3x3 (+BN) + ReLU + 2x2 max-pool, then global pool + linear",
    CNNParams,
    "optlab.plugins.builtins._nets:build_cnn",
)


class ResNet18Params(Params):
    width: Annotated[int, Field(ge=1)] = Field(64, description="channels of the first stage")


class WRNParams(Params):
    depth: Annotated[int, Field(ge=10)] = Field(28, description="depth, 6n + 4 (28 for WRN-28-10)")
    width: Annotated[int, Field(ge=1)] = Field(10, description="widening factor (10 for WRN-28-10)")
    dropout: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="dropout between the two convolutions of each block"
    )

    @model_validator(mode="after")
    def _depth(self) -> WRNParams:
        if (self.depth - 4) % 6:
            raise ValueError(
                f"depth {self.depth}: a wide ResNet has depth 6n + 4 (16, 22, 28, 40, ...)"
            )
        return self


resnet18 = Plugin(
    "ResNet-18 in the CIFAR form (3x3 stem, no max-pool; 11.2M parameters at 10 classes)",
    ResNet18Params,
    "optlab.plugins.builtins._nets:build_resnet18",
)

wrn = Plugin(
    "wide ResNet WRN-depth-width (Zagoruyko & Komodakis), pre-activation, CIFAR form",
    WRNParams,
    "optlab.plugins.builtins._nets:build_wrn",
)
