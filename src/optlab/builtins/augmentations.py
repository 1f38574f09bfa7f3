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

from optlab.plugin import NoParams, Params, Plugin

Unit = Annotated[float, Field(ge=0, le=1)]


class FlipCropParams(Params):
    pad: Annotated[int, Field(ge=0)] = 4
    flip: bool = True


class PipelineParams(Params):
    flip: Unit = 0.5  # probability of a horizontal flip
    rotation: Annotated[float, Field(ge=0, le=180)] = 0.0  # degrees, uniform in +-rotation
    pad: Annotated[int, Field(ge=0)] = 4  # random crop after zero padding
    translate: Annotated[float, Field(ge=0, lt=1)] = 0.0  # fraction of the size, +-
    perspective: Unit = 0.0  # distortion scale
    perspective_p: Unit = 0.5  # probability of the perspective transform
    brightness: Annotated[float, Field(ge=0)] = 0.0
    contrast: Annotated[float, Field(ge=0)] = 0.0
    saturation: Annotated[float, Field(ge=0)] = 0.0
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.0


class AdamWPipelineParams(PipelineParams):
    brightness: Annotated[float, Field(ge=0)] = 0.2
    contrast: Annotated[float, Field(ge=0)] = 0.2
    saturation: Annotated[float, Field(ge=0)] = 0.2
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.1


class CompromisePipelineParams(PipelineParams):
    rotation: Annotated[float, Field(ge=0, le=180)] = 15.0
    perspective: Unit = 0.2
    brightness: Annotated[float, Field(ge=0)] = 0.3
    contrast: Annotated[float, Field(ge=0)] = 0.3
    saturation: Annotated[float, Field(ge=0)] = 0.3
    hue: Annotated[float, Field(ge=0, le=0.5)] = 0.2


class SGDMPipelineParams(CompromisePipelineParams):
    translate: Annotated[float, Field(ge=0, lt=1)] = 0.1


def _build_none(params: NoParams, **_: Any):
    return lambda x, generator: x


none = Plugin("no augmentation", NoParams, _build_none)
flip_crop = Plugin(
    "random horizontal flip and random crop after zero padding, batched on device",
    FlipCropParams,
    "optlab.builtins._augment:build_flip_crop",
)
adamw_pipeline = Plugin(
    "seed 003's AdamW augmentation: flip, crop (pad 4), colour jitter 0.2/0.2/0.2/0.1",
    AdamWPipelineParams,
    "optlab.builtins._augment:build_pipeline",
)
sgdm_pipeline = Plugin(
    "seed 003's SGDM augmentation: flip, rotation 15, crop, translate 0.1, perspective 0.2, "
    "jitter 0.3/0.3/0.3/0.2",
    SGDMPipelineParams,
    "optlab.builtins._augment:build_pipeline",
)
compromise_pipeline = Plugin(
    "seed 003's final compromise: the SGDM augmentation without the translation",
    CompromisePipelineParams,
    "optlab.builtins._augment:build_pipeline",
)
