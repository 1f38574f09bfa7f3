"""Small dataset files laid out exactly like the real downloads (made by the tests)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

MEDMNIST_CLASSES = {
    "pathmnist": 9,
    "dermamnist": 7,
    "octmnist": 4,
    "pneumoniamnist": 2,
    "retinamnist": 5,
    "breastmnist": 2,
    "bloodmnist": 8,
    "tissuemnist": 8,
    "organamnist": 11,
    "organcmnist": 11,
    "organsmnist": 11,
}
RGB = {"pathmnist", "dermamnist", "retinamnist", "bloodmnist"}


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def make_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> None:
    """cifar-10-batches-py/data_batch_1..5 and test_batch: dicts of bytes keys, data as
    (N, 3072) uint8 rows (R, G, B planes), labels as a list."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(
            folder / name,
            {
                b"batch_label": name.encode(),
                b"labels": [int(i % 10) for i in range(per_batch)],
                b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
            },
        )
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})


def make_cifar100(root: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> None:
    """cifar-100-python/train, test and meta, with fine and coarse labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    for name, n in (("train", n_train), ("test", n_test)):
        _pickle(
            folder / name,
            {
                b"filenames": [f"{i}.png".encode() for i in range(n)],
                b"fine_labels": [int(i % 100) for i in range(n)],
                b"coarse_labels": [int(i % 20) for i in range(n)],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            },
        )
    _pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})


def make_medmnist(
    root: Path, flag: str = "pathmnist", size: int = 28, n: int = 60, seed: int = 0
) -> Path:
    """medmnist/{flag}.npz (or {flag}_{size}.npz): {split}_images (N, H, W[, 3]) uint8 and
    {split}_labels (N, 1)."""
    rng = np.random.default_rng(seed)
    classes = MEDMNIST_CLASSES[flag]
    shape = (size, size, 3) if flag in RGB else (size, size)
    arrays = {}
    for split, k in (("train", n), ("val", n // 3), ("test", n // 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % classes).reshape(-1, 1).astype(np.uint8)
    suffix = "" if size == 28 else f"_{size}"
    path = root / "medmnist" / f"{flag}{suffix}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def make_arrays(path: Path, layout: str = "nhwc", n: int = 40, classes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    shapes = {"nhwc": (8, 8, 3), "nchw": (3, 8, 8), "flat": (12,), "sequence": (5, 6)}
    dtype = np.uint8 if layout in ("nhwc", "nchw") else np.float32

    def x(k):
        data = (
            rng.integers(0, 256, (k, *shapes[layout]))
            if dtype == np.uint8
            else rng.normal(size=(k, *shapes[layout]))
        )
        return data.astype(dtype)

    np.savez(
        path,
        x_train=x(n),
        y_train=np.arange(n) % classes,
        x_test=x(n // 2),
        y_test=np.arange(n // 2) % classes,
    )
    return path
