"""Loading the built-in datasets into TensorData (imported by workers, and by `optlab run`
to fetch what is missing before any run starts)."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np

from optlab.plugins.builtins._arrays import REQUIRED, arrays_summary, is_image
from optlab.plugins.builtins.datasets import CIFAR, digits_arrays, medmnist_info
from optlab.plugins.plugin import TensorData, study_path

DOWNLOAD_TIMEOUT = 60  # seconds without an answer before a download gives up


# ---- shared processing ---------------------------------------------------------------------


def subsample(y: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of a stratified subsample: ``per_class`` examples of every class."""
    if per_class is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < per_class:
            raise ValueError(
                f"examples_per_class = {per_class}, but class {c} has "
                f"{len(members)} training examples"
            )
        picked.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(picked))


def split_val(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices), stratified by class."""
    if not fraction:
        return np.arange(len(y)), np.arange(0)
    rng = np.random.default_rng(seed + 1)
    train, val = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = round(len(members) * fraction)
        val.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def to_nchw_float(x: np.ndarray) -> np.ndarray:
    """uint8 images -> [0, 1]; channels-last images (N, H, W, C<=4) -> (N, C, H, W)."""
    x = np.asarray(x)
    scaled = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if scaled.ndim == 3 and x.dtype == np.uint8:  # grey images (N, H, W)
        scaled = scaled[:, None]
    elif scaled.ndim == 4 and scaled.shape[-1] in (1, 3, 4) and scaled.shape[1] not in (1, 3, 4):
        scaled = scaled.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(scaled)


def finish(x_tr, y_tr, x_te, y_te, params: Any, mean=None, std=None) -> TensorData:
    """Subsample, hold out validation, normalise per channel, and make tensors."""
    import torch  # torch: only where a run trains; the readers never import it

    y_tr, y_te = np.asarray(y_tr).reshape(-1).astype(np.int64), np.asarray(y_te).reshape(-1)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    keep = subsample(y_tr, params.examples_per_class, params.data_seed)
    x_tr, y_tr = x_tr[keep], y_tr[keep]
    train, val = split_val(y_tr, params.val_fraction, params.data_seed)
    mean = getattr(params, "mean", None) or mean
    std = getattr(params, "std", None) or std

    def tensor(x):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if mean is not None and t.dim() == 4:
            shape = (1, -1, 1, 1)
            t = (t - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
        return t

    def labels(y):
        return torch.from_numpy(np.asarray(y, dtype=np.int64))

    data = TensorData(
        tensor(x_tr[train]), labels(y_tr[train]), tensor(x_te), labels(y_te), num_classes=classes
    )
    if mean is not None:
        data.mean, data.std = [float(v) for v in mean], [float(v) for v in std]
    if len(val):
        data.x_val, data.y_val = tensor(x_tr[val]), labels(y_tr[val])
    return data


# ---- digits and synthetic ------------------------------------------------------------------


def build_digits(params: Any, **_: Any) -> TensorData:
    x_tr, y_tr, x_te, y_te = digits_arrays(params.test_fraction, params.split_seed)
    # Pixels are 0..16; scale to [0, 1] and standardise with the training split's mean
    # and std, so the test split is normalised with constants it did not see.
    x_tr, x_te = x_tr / 16.0, x_te / 16.0
    mu, sd = x_tr.mean(), x_tr.std()
    images = [((a - mu) / sd).reshape(-1, 1, 8, 8) for a in (x_tr, x_te)]
    return finish(images[0], y_tr, images[1], y_te, params)


def build_synthetic(params: Any, **_: Any) -> TensorData:
    import torch  # torch: only where a run trains; the readers never import it

    g = torch.Generator().manual_seed(params.seed)
    shape = tuple(params.shape)
    # One prototype per class plus Gaussian noise: learnable, not trivially so.
    prototypes = torch.randn((params.classes, *shape), generator=g)

    def split(n: int):
        y = torch.randint(0, params.classes, (n,), generator=g)
        return (
            prototypes[y] + params.noise * torch.randn((n, *shape), generator=g)
        ).numpy(), y.numpy()

    x_tr, y_tr = split(params.train_size)
    x_te, y_te = split(params.test_size)
    data = finish(x_tr, y_tr, x_te, y_te, params)
    data.num_classes = params.classes
    return data


# ---- CIFAR ---------------------------------------------------------------------------------


def _data_dir(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir or os.environ.get("OPTLAB_DATA") or "data")


def _cifar_files(name: str) -> tuple[list[str], list[str], bytes]:
    if name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"
    return ["train"], ["test"], b"fine_labels"


def prepare_cifar(name: str, params: Any, data_dir: str | None = None) -> None:
    """Make sure the pickled batches are in the data directory; download them if allowed."""
    root = _data_dir(data_dir)
    cls, folder = CIFAR[name][0], CIFAR[name][1]
    train, test, _ = _cifar_files(name)
    missing = [f for f in train + test if not (root / folder / f).is_file()]
    if not missing:
        return
    import torchvision  # torchvision: only to download a dataset

    tv = getattr(torchvision.datasets, cls)
    how = (
        f"download {tv.filename} ({tv.url}) and extract it into {root}, or point "
        "--data-dir (OPTLAB_DATA) at a folder that has it"
    )
    if not params.download:
        raise ValueError(f"{name}: not found in {root / folder} (download = false); {how}")
    try:
        _with_timeout(
            lambda: torchvision.datasets.utils.download_and_extract_archive(
                tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5
            )
        )
    except Exception as e:  # no network, a proxy, a bad checksum: all the same to the user
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"{name}: not found in {root / folder} and the download failed ({reason}); {how}"
        ) from None


def _with_timeout(call) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        call()
    finally:
        socket.setdefaulttimeout(previous)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def load_cifar(name: str, params: Any, data_dir: str | None = None) -> TensorData:
    prepare_cifar(name, params, data_dir)
    folder = _data_dir(data_dir) / CIFAR[name][1]
    train, test, key = _cifar_files(name)

    def read(files):
        parts = [_unpickle(folder / f) for f in files]
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(p[key]) for p in parts])
        return x.astype(np.float32) / 255.0, y

    (x_tr, y_tr), (x_te, y_te) = read(train), read(test)
    data = finish(x_tr, y_tr, x_te, y_te, params, mean=CIFAR[name][4], std=CIFAR[name][5])
    data.num_classes = CIFAR[name][2]
    return data


def build_cifar10(params: Any, *, data_dir: str | None = None, **_: Any) -> TensorData:
    return load_cifar("cifar10", params, data_dir)


def build_cifar100(params: Any, *, data_dir: str | None = None, **_: Any) -> TensorData:
    return load_cifar("cifar100", params, data_dir)


# ---- MedMNIST ------------------------------------------------------------------------------


def medmnist_file(flag: str, size: int, data_dir: str | None = None) -> Path:
    """Where medmnist keeps a set: ``{flag}.npz`` at 28 pixels, ``{flag}_{size}.npz`` else."""
    suffix = "" if size == 28 else f"_{size}"
    return _data_dir(data_dir) / "medmnist" / f"{flag}{suffix}.npz"


def prepare_medmnist(flag: str, params: Any, data_dir: str | None = None) -> None:
    path = medmnist_file(flag, params.size, data_dir)
    if not path.is_file():
        suffix = "" if params.size == 28 else f"_{params.size}"
        entry = medmnist_info()[flag]
        url, md5 = entry[f"url{suffix}"], entry[f"MD5{suffix}"]
        how = (
            f"download {path.name} ({url}) into {path.parent}, or point --data-dir at a "
            "folder whose medmnist/ has it"
        )
        if not params.download:
            raise ValueError(f"{flag}: not found at {path} (download = false); {how}")
        try:
            import torchvision  # torchvision: only to download a dataset

            path.parent.mkdir(parents=True, exist_ok=True)
            _with_timeout(
                lambda: torchvision.datasets.utils.download_url(
                    url, str(path.parent), filename=path.name, md5=md5
                )
            )
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(
                f"{flag}: not found at {path} and the download failed ({reason}); {how}"
            ) from None
    if params.examples_per_class is not None:
        with np.load(path) as f:
            smallest = int(np.bincount(f["train_labels"].reshape(-1)).min())
        if params.examples_per_class > smallest:
            raise ValueError(
                f"examples_per_class = {params.examples_per_class}, but the "
                f"smallest class of {flag}'s training set has {smallest}"
            )


def load_medmnist(flag: str, params: Any, data_dir: str | None = None) -> TensorData:
    prepare_medmnist(flag, params, data_dir)
    with np.load(medmnist_file(flag, params.size, data_dir)) as f:
        x_tr, y_tr = to_nchw_float(f["train_images"]), f["train_labels"]
        x_te, y_te = to_nchw_float(f["test_images"]), f["test_labels"]
    channels = x_tr.shape[1]
    half = (0.5,) * channels  # the MedMNIST examples' normalisation
    data = finish(x_tr, y_tr, x_te, y_te, params, mean=half, std=half)
    data.num_classes = len(medmnist_info()[flag]["label"])
    return data


def __getattr__(name: str):
    # build_medmnist_<flag> / prepare_medmnist_<flag> for every 2D set, named by entry points.
    for prefix, func in (
        ("build_medmnist_", load_medmnist),
        ("prepare_medmnist_", prepare_medmnist),
    ):
        if name.startswith(prefix):
            flag = name.removeprefix(prefix)

            def bound(params, *, data_dir=None, _flag=flag, _func=func, **_):
                return _func(_flag, params, data_dir)

            return bound
    raise AttributeError(name)


def prepare_cifar10(params: Any, *, data_dir: str | None = None, **_: Any) -> None:
    prepare_cifar("cifar10", params, data_dir)


def prepare_cifar100(params: Any, *, data_dir: str | None = None, **_: Any) -> None:
    prepare_cifar("cifar100", params, data_dir)


# ---- arrays --------------------------------------------------------------------------------


def build_arrays(params: Any, **_: Any) -> TensorData:

    arrays_summary(params.path)
    with np.load(study_path(params.path)) as f:
        x_tr, y_tr, x_te, y_te = (f[k] for k in REQUIRED)
    if is_image(x_tr.ndim, x_tr.dtype):
        x_tr, x_te = to_nchw_float(x_tr), to_nchw_float(x_te)
    else:
        x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
        if params.mean is not None:
            # Vectors and sequences: the given values, one for all features or one per
            # feature (the last axis); images take them per channel in finish().
            m, s = (np.asarray(v, dtype=np.float32) for v in (params.mean, params.std))
            x_tr, x_te = (x_tr - m) / s, (x_te - m) / s
            return finish(
                x_tr, y_tr, x_te, y_te, params.model_copy(update={"mean": None, "std": None})
            )
    mean = std = None
    if params.normalize and params.mean is None:
        axes = (0, 2, 3) if x_tr.ndim == 4 else tuple(range(x_tr.ndim))
        mean = x_tr.mean(axis=axes)
        std = x_tr.std(axis=axes) + 1e-8
        if x_tr.ndim != 4:  # vectors and sequences: one global standardisation
            x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
            mean = std = None
        else:
            mean, std = tuple(mean.tolist()), tuple(std.tolist())
    return finish(x_tr, y_tr, x_te, y_te, params, mean=mean, std=std)
