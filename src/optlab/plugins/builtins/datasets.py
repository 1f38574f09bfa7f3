"""Built-in datasets.

Every dataset takes ``examples_per_class`` (a stratified subsample of the training set,
deterministic by ``data_seed``; seed 002's data regimes) and ``val_fraction`` (a stratified
validation split held out of the training set; its metrics are ``val_loss``/``val_acc``).
Images are normalised per channel with the dataset's constants (``mean``/``std`` override
them). CIFAR and MedMNIST files live under the data directory (``--data-dir``,
``OPTLAB_DATA``, default ``./data``) exactly as their own downloads lay them out;
``optlab run`` downloads what is missing before any run starts, and says where the files
were expected when it cannot.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from optlab.plugins.builtins._arrays import arrays_summary
from optlab.plugins.plugin import Params, Plugin

Channels = list[float] | None


class Common(Params):
    examples_per_class: Annotated[int, Field(ge=1)] | None = Field(
        None, description="a stratified subset: this many training examples per class"
    )
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.0, description="share of the training set held out for validation (val_loss, val_acc)"
    )
    data_seed: int = Field(0, description="seed of the subset and of the validation split")


class Normalised(Common):
    mean: Channels = Field(
        None, description="per-channel mean to normalise with (default: the dataset's own)"
    )
    std: Channels = Field(
        None,
        description="per-channel standard deviation to normalise with (default: the dataset's own)",
    )


def _sizes(train_size: int, classes: int, params: Common) -> dict[str, Any]:
    n = train_size if params.examples_per_class is None else params.examples_per_class * classes
    return {"train_size": n - round(n * params.val_fraction)}


def _check_per_class(
    params: Common, smallest: int | None | Callable[[], int | None], name: str
) -> None:
    """``smallest``: the smallest class's size, or a function that finds it (called only
    when ``examples_per_class`` asks, since finding it may load the data)."""
    epc = params.examples_per_class
    if epc is None:
        return
    if callable(smallest):
        smallest = smallest()
    if smallest is not None and epc > smallest:
        raise ValueError(
            f"examples_per_class = {epc}, but the smallest class of {name}'s "
            f"training set has {smallest}"
        )


# ---- digits ---------------------------------------------------------------------------------


class DigitsParams(Common):
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.25, description="share of the 1797 images kept for testing"
    )
    split_seed: int = Field(0, description="seed of the train/test split")


@cache
def digits_arrays(test_fraction: float, split_seed: int):
    """The digits split (numpy arrays: x_train, y_train, x_test, y_test), without torch."""
    from sklearn.datasets import load_digits  # scikit-learn: only for the digits dataset
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


@cache
def _digits_smallest_class(test_fraction: float, split_seed: int) -> int:

    y = digits_arrays(test_fraction, split_seed)[1]
    return int(np.bincount(y).min())


digits = Plugin(
    "scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes); no download",
    DigitsParams,
    "optlab.plugins.builtins._data:build_digits",
    info=lambda p: _sizes(1797 - math.ceil(p.test_fraction * 1797), 10, p),
    check=lambda p, **_: _check_per_class(
        p, lambda: _digits_smallest_class(p.test_fraction, p.split_seed), "digits"
    ),
)


# ---- synthetic --------------------------------------------------------------------------------


class SyntheticParams(Common):
    classes: Annotated[int, Field(ge=2)] = Field(10, description="number of classes")
    shape: list[Annotated[int, Field(ge=1)]] = Field(
        [3, 32, 32], description="input shape, channels first"
    )
    train_size: Annotated[int, Field(ge=1)] = Field(1024, description="training examples")
    test_size: Annotated[int, Field(ge=1)] = Field(256, description="test examples")
    noise: Annotated[float, Field(ge=0)] = Field(
        1.0, description="standard deviation of the noise around each class's centre"
    )
    seed: int = Field(0, description="seed of the generated data")

    @model_validator(mode="after")
    def _shape_not_empty(self) -> SyntheticParams:
        if not self.shape:
            raise ValueError("shape needs at least one dimension")
        return self


synthetic = Plugin(
    "procedural class prototypes plus noise, deterministic by seed; any shape and size",
    SyntheticParams,
    "optlab.plugins.builtins._data:build_synthetic",
    info=lambda p: _sizes(p.train_size, p.classes, p),
)


# ---- CIFAR ----------------------------------------------------------------------------------

CIFAR = {
    # name: (torchvision class, folder, classes, per class, mean, std)
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        10,
        5000,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": (
        "CIFAR100",
        "cifar-100-python",
        100,
        500,
        (0.5071, 0.4867, 0.4408),
        (0.2675, 0.2565, 0.2761),
    ),  # seed 001's constants
}


class CifarParams(Normalised):
    download: bool = Field(True, description="fetch missing files before any run starts")


def _cifar(name: str) -> Plugin:
    _, _, classes, per_class, _, _ = CIFAR[name]
    return Plugin(
        f"{name.upper()} through torchvision's download (50000 train, 10000 test, "
        f"{classes} classes, 32x32 RGB)",
        CifarParams,
        f"optlab.plugins.builtins._data:build_{name}",
        prepare=f"optlab.plugins.builtins._data:prepare_{name}",
        info=lambda p: _sizes(50000, classes, p),
        check=lambda p, **_: _check_per_class(p, per_class, name),
    )


cifar10 = _cifar("cifar10")
cifar100 = _cifar("cifar100")


# ---- MedMNIST -------------------------------------------------------------------------------

# The 2D multi-class sets (ChestMNIST is multi-label and is left out).
MEDMNIST_2D = (
    "pathmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)


class MedMNISTParams(Normalised):
    size: Literal[28, 64, 128, 224] = Field(28, description="image side in pixels")
    download: bool = Field(True, description="fetch missing files before any run starts")


@cache
def medmnist_info() -> dict[str, Any]:
    """medmnist's INFO table, read from its info module without importing the package
    (whose __init__ imports torch)."""
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the medmnist package is not installed (pip install medmnist)")
    path = Path(next(iter(spec.submodule_search_locations))) / "info.py"
    info_spec = importlib.util.spec_from_file_location("_optlab_medmnist_info", path)
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)
    return module.INFO


def _medmnist(flag: str) -> Plugin:
    def info(p: MedMNISTParams) -> dict[str, Any]:
        entry = medmnist_info()[flag]
        return _sizes(entry["n_samples"]["train"], len(entry["label"]), p)

    return Plugin(
        f"MedMNIST {flag} (2D, multi-class) through the medmnist package's files; "
        "sizes 28, 64, 128, 224",
        MedMNISTParams,
        f"optlab.plugins.builtins._data:build_medmnist_{flag}",
        prepare=f"optlab.plugins.builtins._data:prepare_medmnist_{flag}",
        info=info,
    )


for _flag in MEDMNIST_2D:
    globals()[_flag] = _medmnist(_flag)


# ---- arrays ---------------------------------------------------------------------------------


class ArraysParams(Normalised):
    path: str = Field(
        description=".npz with x_train, y_train, x_test, y_test; relative to the study file"
    )
    normalize: bool = Field(
        True, description="standardise with the training split's per-channel statistics"
    )


def _arrays_check(p: ArraysParams, **_: Any) -> None:

    summary = arrays_summary(p.path)
    _check_per_class(p, summary["smallest_class"], p.path)
    if (p.mean is None) != (p.std is None):
        raise ValueError("give mean and std together (or neither)")
    if p.mean is not None and not summary["image"]:
        features = summary["features"]
        for key, values in (("mean", p.mean), ("std", p.std)):
            if len(values) not in (1, features):
                raise ValueError(
                    f"{key} has {len(values)} values; {p.path} holds vectors of "
                    f"{features} features: give 1 value (for all) or {features} "
                    "(one per feature)"
                )
        if any(v <= 0 for v in p.std):
            raise ValueError("std must be positive")


def _arrays_info(p: ArraysParams) -> dict[str, Any]:

    summary = arrays_summary(p.path)
    return _sizes(summary["train_size"], summary["classes"], p)


arrays = Plugin(
    "a .npz file with x_train, y_train, x_test, y_test: images (NHWC or NCHW, uint8 or "
    "float), vectors or sequences",
    ArraysParams,
    "optlab.plugins.builtins._data:build_arrays",
    info=_arrays_info,
    check=_arrays_check,
)
