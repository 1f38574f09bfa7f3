"""Built-in augmentations, applied to the whole batch tensor on the device.

``build`` returns ``augment(x, generator) -> x`` for an NCHW float batch; randomness
comes only from the generator, so a run's augmentation is reproducible from its seed.

Seed 003's three torchvision pipelines are here as batched equivalents, with every knob
exposed: ``adamw_pipeline`` (flip, crop, colour jitter), ``sgdm_pipeline`` (adds rotation,
translation and perspective, stronger jitter) and ``compromise_pipeline`` (its final
choice: the SGDM pipeline without the translation). Differences from the per-image PIL
versions: rotation, translation and perspective are composed into one resampling per
image (bilinear), areas outside the image are filled with 0 in normalised space (the
dataset mean), and colour jitter applies brightness, contrast, saturation and hue in that
fixed order on the un-normalised image.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from optlab.plugins.plugin import NoParams, Params, Plugin

Unit = Annotated[float, Field(ge=0, le=1)]


class FlipCropParams(Params):
    pad: Annotated[int, Field(ge=0)] = Field(4, description="zero padding before the random crop")
    flip: bool = Field(True, description="random horizontal flips")


class PipelineParams(Params):
    flip: Unit = Field(0.5, description="probability of a horizontal flip")
    rotation: Annotated[float, Field(ge=0, le=180)] = Field(
        0.0, description="degrees, uniform in +-rotation"
    )
    pad: Annotated[int, Field(ge=0)] = Field(4, description="zero padding before the random crop")
    translate: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="fraction of the size, uniform in +-translate"
    )
    perspective: Unit = Field(0.0, description="distortion scale of the perspective transform")
    perspective_p: Unit = Field(0.5, description="probability of the perspective transform")
    brightness: Annotated[float, Field(ge=0)] = Field(0.0, description="colour jitter: brightness")
    contrast: Annotated[float, Field(ge=0)] = Field(0.0, description="colour jitter: contrast")
    saturation: Annotated[float, Field(ge=0)] = Field(0.0, description="colour jitter: saturation")
    hue: Annotated[float, Field(ge=0, le=0.5)] = Field(0.0, description="colour jitter: hue")


class AdamWPipelineParams(PipelineParams):
    brightness: Annotated[float, Field(ge=0)] = Field(0.2, description="colour jitter: brightness")
    contrast: Annotated[float, Field(ge=0)] = Field(0.2, description="colour jitter: contrast")
    saturation: Annotated[float, Field(ge=0)] = Field(0.2, description="colour jitter: saturation")
    hue: Annotated[float, Field(ge=0, le=0.5)] = Field(0.1, description="colour jitter: hue")


class CompromisePipelineParams(PipelineParams):
    rotation: Annotated[float, Field(ge=0, le=180)] = Field(
        15.0, description="degrees, uniform in +-rotation"
    )
    perspective: Unit = Field(0.2, description="distortion scale of the perspective transform")
    brightness: Annotated[float, Field(ge=0)] = Field(0.3, description="colour jitter: brightness")
    contrast: Annotated[float, Field(ge=0)] = Field(0.3, description="colour jitter: contrast")
    saturation: Annotated[float, Field(ge=0)] = Field(0.3, description="colour jitter: saturation")
    hue: Annotated[float, Field(ge=0, le=0.5)] = Field(0.2, description="colour jitter: hue")


class SGDMPipelineParams(CompromisePipelineParams):
    translate: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.1, description="fraction of the size, uniform in +-translate"
    )


def _build_none(params: NoParams, **_: Any):
    return lambda x, generator: x


none = Plugin("no augmentation", NoParams, _build_none)
flip_crop = Plugin(
    "random horizontal flip and random crop after zero padding, batched on device",
    FlipCropParams,
    "optlab.plugins.builtins._augment:build_flip_crop",
)
adamw_pipeline = Plugin(
    "seed 003's AdamW augmentation: flip, crop (pad 4), colour jitter 0.2/0.2/0.2/0.1",
    AdamWPipelineParams,
    "optlab.plugins.builtins._augment:build_pipeline",
)
sgdm_pipeline = Plugin(
    "seed 003's SGDM augmentation: flip, rotation 15, crop, translate 0.1, perspective 0.2, "
    "jitter 0.3/0.3/0.3/0.2",
    SGDMPipelineParams,
    "optlab.plugins.builtins._augment:build_pipeline",
)
compromise_pipeline = Plugin(
    "seed 003's final compromise: the SGDM augmentation without the translation",
    CompromisePipelineParams,
    "optlab.plugins.builtins._augment:build_pipeline",
)
