"""Built-in datasets: scikit-learn's bundled digits and a procedural synthetic set."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field, model_validator

from optlab.plugin import Params, Plugin, TensorData


class DigitsParams(Params):
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25
    split_seed: int = 0


def _build_digits(params: DigitsParams, **_: object) -> TensorData:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=params.test_fraction, random_state=params.split_seed, stratify=y
    )
    # Pixels are 0..16; scale to [0, 1] then standardise with the training split's
    # mean and std, so the test split is normalised with constants it did not see.
    x_tr, x_te = x_tr / 16.0, x_te / 16.0
    mean, std = x_tr.mean(), x_tr.std()

    def images(a):
        return torch.tensor((a - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8)

    def labels(a):
        return torch.tensor(a, dtype=torch.int64)

    return TensorData(images(x_tr), labels(y_tr), images(x_te), labels(y_te), num_classes=10)


digits = Plugin(
    "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download",
    DigitsParams,
    _build_digits,
    info=lambda p: {"train_size": 1797 - math.ceil(p.test_fraction * 1797)},
)


class SyntheticParams(Params):
    classes: Annotated[int, Field(ge=2)] = 10
    shape: list[Annotated[int, Field(ge=1)]] = [3, 32, 32]
    train_size: Annotated[int, Field(ge=1)] = 1024
    test_size: Annotated[int, Field(ge=1)] = 256
    noise: Annotated[float, Field(ge=0)] = 1.0
    seed: int = 0

    @model_validator(mode="after")
    def _shape_not_empty(self) -> SyntheticParams:
        if not self.shape:
            raise ValueError("shape needs at least one dimension")
        return self


def _build_synthetic(params: SyntheticParams, **_: object) -> TensorData:
    import torch

    g = torch.Generator().manual_seed(params.seed)
    shape = tuple(params.shape)
    # One smooth prototype per class plus Gaussian noise: learnable, not trivially so.
    prototypes = torch.randn((params.classes, *shape), generator=g)

    def split(n: int):
        y = torch.randint(0, params.classes, (n,), generator=g)
        x = prototypes[y] + params.noise * torch.randn((n, *shape), generator=g)
        return x.float(), y

    x_tr, y_tr = split(params.train_size)
    x_te, y_te = split(params.test_size)
    return TensorData(x_tr, y_tr, x_te, y_te, num_classes=params.classes)


synthetic = Plugin(
    "procedural class prototypes plus noise, deterministic by seed; any shape and size",
    SyntheticParams,
    _build_synthetic,
    info=lambda p: {"train_size": p.train_size},
)
