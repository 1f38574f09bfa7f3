"""What the ``arrays`` dataset reads of its .npz file before training (sizes, classes, the
kind of input), with numpy alone: the checks at study load and the loader share it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from optlab.plugins.plugin import study_path

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def arrays_summary(path: str) -> dict[str, Any]:

    p = study_path(path)
    if not p.is_file():
        where = "" if p == Path(path) else f" (looked for {p}: relative to the study file)"
        raise ValueError(f"no such file: {path}{where}")
    return _arrays_summary(str(p.resolve()), p.stat().st_mtime)


@cache
def _arrays_summary(path: str, mtime: float) -> dict[str, Any]:
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({e})") from None
    with f:
        missing = [k for k in REQUIRED if k not in f.files]
        if missing:
            raise ValueError(
                f"{path}: missing {', '.join(missing)}; an arrays file needs "
                f"{', '.join(REQUIRED)} (it has {', '.join(f.files) or 'nothing'})"
            )
        shapes = {k: f[k].shape for k in REQUIRED}
        image = is_image(f["x_train"].ndim, f["x_train"].dtype)
        for split in ("train", "test"):
            nx, ny = shapes[f"x_{split}"][0], shapes[f"y_{split}"][0]
            if nx != ny:
                raise ValueError(f"{path}: x_{split} has {nx} rows but y_{split} has {ny}")
        y = f["y_train"].reshape(-1).astype(np.int64)
    counts = np.bincount(y)
    return {
        "train_size": len(y),
        "classes": len(counts),
        "smallest_class": int(counts[counts > 0].min()),
        "image": image,
        "features": None if image else int(shapes["x_train"][-1]),
    }


def is_image(ndim: int, dtype: Any) -> bool:
    """Images: (N, C, H, W) or (N, H, W, C), or grey uint8 (N, H, W); anything else is
    vectors or sequences."""
    return ndim == 4 or (ndim == 3 and dtype == np.uint8)
