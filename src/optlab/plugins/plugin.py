"""The plugin contract shared by built-in and third-party plugins.

A plugin is a :class:`Plugin` object named by an entry point in one of the groups in
:data:`optlab.plugins.registry.GROUPS`. Its ``params`` model validates the study's flat table
(everything beside ``name``); its ``build`` is called in the worker. Modules that define
plugins must not import torch at module level, so that ``optlab show`` validates studies
without torch; ``build`` may be given as ``"module:attr"`` to defer the import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for plugin parameter models: unknown keys are errors, values are frozen, and
    floats are finite (a study's values travel as JSON, which has no inf or nan)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoParams(Params):
    """For plugins that take no parameters."""


@dataclass(frozen=True)
class Plugin:
    """What an entry point points at."""

    description: str
    params: type[Params] = NoParams
    build: Callable[..., Any] | str = field(default=None, repr=False)  # type: ignore[assignment]
    # Optional, torch-free, run when a study is loaded:
    # check(params, epochs=..., train_size=...) raises ValueError for a config that cannot
    # work; info(params) (datasets) returns facts such as {"train_size": n} without loading.
    check: Callable[..., None] | None = field(default=None, repr=False)
    info: Callable[[Any], dict[str, Any]] | None = field(default=None, repr=False)
    # Datasets: prepare(params, data_dir=...) fetches what is missing, in `optlab run`,
    # before any run starts; raises ValueError with what to do when it cannot.
    prepare: Callable[..., None] | str | None = field(default=None, repr=False)

    def preparer(self) -> Callable[..., None] | None:
        return _resolve(self.prepare) if self.prepare is not None else None

    def builder(self) -> Callable[..., Any]:
        """The build callable, imported on first use when given as ``module:attr``."""
        return _resolve(self.build)

    def create(self, params: dict[str, Any] | Params, **context: Any) -> Any:
        """Validate ``params`` (if a dict) and build the plugin's object."""
        if isinstance(params, dict):
            params = self.params(**params)
        return self.builder()(params, **context)


def _resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


@dataclass
class TensorData:
    """What a dataset plugin builds: whole splits as tensors (moved to the device once).

    ``x_*`` are float tensors of shape (N, *input_shape); ``y_*`` are int64 class labels.
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    num_classes: int
    x_val: Any = None  # an optional validation split held out of the training set
    y_val: Any = None
    mean: Any = None  # per-channel normalisation applied to images (for colour augmentation)
    std: Any = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: Any) -> TensorData:
        tensors = (self.x_train, self.y_train, self.x_test, self.y_test, self.x_val, self.y_val)
        moved = [None if t is None else t.to(device) for t in tensors]
        return TensorData(
            *moved[:4],
            num_classes=self.num_classes,
            x_val=moved[4],
            y_val=moved[5],
            mean=self.mean,
            std=self.std,
        )


# ---- files a study names ------------------------------------------------------------------

_STUDY_FOLDER: ContextVar[str | None] = ContextVar("optlab_study_folder", default=None)


@contextmanager
def study_folder(folder: str | Path | None) -> Iterator[None]:
    """While expanding or training a study: the folder of its file, which relative file
    paths in its plugin tables are read against."""
    token = _STUDY_FOLDER.set(str(folder) if folder else None)
    try:
        yield
    finally:
        _STUDY_FOLDER.reset(token)


def current_study_folder() -> str | None:
    return _STUDY_FOLDER.get()


def study_path(path: str) -> Path:
    """A file a study names: absolute as given, else relative to the study file's folder
    (the working directory when there is none). The config keeps the path as written, so a
    run's id does not depend on where the study sits on a machine."""
    p = Path(path).expanduser()
    folder = _STUDY_FOLDER.get()
    return p if p.is_absolute() or folder is None else Path(folder) / p
