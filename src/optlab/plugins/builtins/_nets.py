"""Network definitions for the built-in models (imports torch; loaded by the worker)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from optlab.plugins.builtins.models import CNNParams, MLPParams


def build_mlp(params: MLPParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in params.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_cnn(params: CNNParams, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    c_in, side = _image_channels("cnn", input_shape), min(input_shape[1:])
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


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, c_in: int, num_classes: int, width: int):
        super().__init__()
        # CIFAR form: a 3x3 stride-1 stem and no max-pool, so 32x32 inputs keep their detail.
        self.stem = nn.Sequential(
            nn.Conv2d(c_in, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers, c = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c = c_out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv, dropout, BN-ReLU-conv."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.dropout(self.conv1(pre)))))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, c_in: int, num_classes: int, depth: int, width: int, dropout: float):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(c_in, widths[0], 3, 1, 1, bias=False)
        blocks, c = [], widths[0]
        for i, c_out in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(c, c_out, 2 if (i > 0 and j == 0) else 1, dropout))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _image_channels(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs image input (C, H, W); this dataset gives {input_shape}")
    return input_shape[0]


def build_resnet18(params, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet18(_image_channels("resnet18", input_shape), num_classes, params.width)


def build_wrn(params, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return WideResNet(
        _image_channels("wrn", input_shape), num_classes, params.depth, params.width, params.dropout
    )
