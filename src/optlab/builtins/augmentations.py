"""Built-in augmentations, applied to the whole batch tensor on the device.

``build`` returns ``augment(x, generator) -> x`` for an NCHW float batch; randomness
comes only from the generator, so a run's augmentation is reproducible from its seed.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from optlab.plugin import NoParams, Params, Plugin


class FlipCropParams(Params):
    pad: Annotated[int, Field(ge=0)] = 4
    flip: bool = True


def _build_none(params: NoParams, **_: Any):
    return lambda x, generator: x


def _build_flip_crop(params: FlipCropParams, **_: Any):
    import torch
    import torch.nn.functional as F

    def augment(x, generator):
        n, _, h, w = x.shape
        if params.flip:
            mask = torch.rand(n, device=x.device, generator=generator) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        if params.pad:
            p = params.pad
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=generator)
            dx = torch.randint(0, 2 * p + 1, (n,), device=x.device, generator=generator)
            # One gather for the whole batch: each image's rows and columns, offset.
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            idx = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[idx, chan, rows, cols]
        return x

    return augment


none = Plugin("no augmentation", NoParams, _build_none)
flip_crop = Plugin("random horizontal flip and random crop after zero padding, batched on device",
                   FlipCropParams, _build_flip_crop)
