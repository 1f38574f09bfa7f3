"""Network definitions for the built-in models (imports torch; loaded by the worker)."""

from __future__ import annotations

import math

from torch import nn

from optlab.builtins.models import CNNParams, MLPParams


def build_mlp(params: MLPParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in params.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_cnn(params: CNNParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image input (C, H, W); this dataset gives {input_shape}")
    layers: list[nn.Module] = []
    c_in, side = input_shape[0], min(input_shape[1:])
    for c_out in params.channels:
        layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not params.batch_norm))
        if params.batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU(inplace=True))
        if side >= 2:  # pool while there is something left to pool
            layers.append(nn.MaxPool2d(2))
            side //= 2
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)
