"""The batch_loss probe: loss and accuracy of the model on the probe batch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class BatchLoss:
    @torch.no_grad()
    def __call__(self, ctx: Any) -> dict[str, Any]:
        out = ctx.model(ctx.x).float()
        return {
            "loss": F.cross_entropy(out, ctx.y),
            "accuracy": (out.argmax(1) == ctx.y).float().mean(),
        }
