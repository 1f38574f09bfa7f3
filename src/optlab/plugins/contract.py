"""The plugin contract: what each kind's ``build`` receives, returns, and what optlab does
with it. Everything a plugin needs is here and re-exported by ``optlab`` itself::

    from optlab import Params, Plugin

A plugin is a :class:`Plugin` object: a one-line ``description``, a ``params`` model (derived
from :class:`Params`, or :class:`ProbeParams` for probes) that validates the study's table
(every key beside ``name``; give each field a ``Field(description=...)``, which ``optlab
plugins`` shows), and ``build(params, **context)``, called in the worker, which returns the
object described below for its kind. Name it in an entry-point group (``optlab.optimizers``
...) of an installed package, or in a study's ``[plugins.optimizers]`` table as
``"FILE.py:OBJECT"``. A plugin module imports torch only inside ``build`` (or gives ``build``
as ``"module:function"``), so studies load and validate without torch. Optional
``check(params, epochs=..., train_size=...)`` raises ValueError for a config that cannot work;
it runs when the study is loaded. Datasets may add ``info(params)`` (facts such as
``{"train_size": n}``, without loading) and ``prepare(params, data_dir=...)`` (fetch what is
missing before any run starts; ValueError with what to do when it cannot).

The build signatures, as :class:`typing.Protocol` classes (``**context`` may carry more keys
in later versions; accept ``**_``):
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from optlab.plugins.plugin import NoParams, Params, Plugin, TensorData
from optlab.plugins.probe_params import ProbeParams, check_schedule

if TYPE_CHECKING:  # for annotations only: execution is a stage above the plugins
    import torch  # torch: only where a run trains; the readers never import it

    from optlab.execution.executors import Executor


class DatasetBuild(Protocol):
    """Returns the whole dataset as tensors, on the CPU (optlab moves it to the worker's
    device once and keeps it there between runs): :class:`TensorData` with ``x_train``,
    ``y_train``, ``x_test``, ``y_test`` (float inputs of shape (N, *input_shape), int64
    labels), ``num_classes``, and for images ``mean``/``std``. Files live under
    ``data_dir``."""

    def __call__(self, params: Any, *, data_dir: str, **context: Any) -> TensorData: ...


class ModelBuild(Protocol):
    """Returns a ``torch.nn.Module`` mapping (B, *input_shape) to (B, num_classes) logits;
    optlab moves it to the device (channels-last for images on CUDA)."""

    def __call__(
        self, params: Any, *, input_shape: tuple[int, ...], num_classes: int, **context: Any
    ) -> torch.nn.Module: ...


class OptimizerBuild(Protocol):
    """Returns a ``torch.optim.Optimizer`` (or anything with ``param_groups``, ``step``,
    ``zero_grad``, ``state_dict`` and ``load_state_dict``) over ``model``'s parameters.

    What the engine does with it, every step: it sets every param group's ``lr`` to that
    group's LR when built times the LR schedule's factor (so the schedule lives in optlab,
    not in the optimizer), zeroes the gradients, back-propagates the loss, and calls
    ``step()``. Optional capabilities, as attributes of the optimizer:

    - ``optlab_closure = True``: the engine calls ``step(closure)``; ``closure()`` zeroes the
      gradients, evaluates the loss on the same batch at the current weights, back-
      propagates and returns the loss (SAM). ``closure(create_graph=True)`` leaves
      gradients that keep their graph, for Hessian-vector products (Sophia); detach them
      (``p.grad = p.grad.detach()``) when done. Every call is one more gradient
      evaluation, counted in the run's ``sfo``. Not with ``precision = "amp"``.
    - ``train()`` and ``eval()``: the engine calls ``eval()`` before each epoch's evaluation,
      epoch-end probes, checkpoint and saved weights, and ``train()`` before training goes
      on (schedule-free methods evaluate an average of their iterates). Both must do
      nothing when already in that mode, and the mode must be in ``state_dict()``.

    Checkpoints hold ``state_dict()``; a resumed run calls ``load_state_dict`` on a freshly
    built optimizer and must then produce exactly the steps of the run that never
    stopped."""

    def __call__(
        self, params: Any, *, model: torch.nn.Module, **context: Any
    ) -> torch.optim.Optimizer: ...


LRFactor = Callable[[float, float, int], float]


class LRScheduleBuild(Protocol):
    """Returns ``factor(t, dt, step)``, the multiple of the optimizer's base LR for the
    step about to be taken: ``t`` the training progress in epochs at its start (epoch +
    i / steps per epoch), ``dt`` one step in epochs, ``step`` the steps taken before it."""

    def __call__(self, params: Any, *, epochs: int, **context: Any) -> LRFactor: ...


class BatchScheduleBuild(Protocol):
    """Returns ``batch_size_at(epoch)`` (0-based) -> the batch size for that whole epoch;
    a size above the training set is capped to it (full batch)."""

    def __call__(
        self, params: Any, *, epochs: int, train_size: int, **context: Any
    ) -> Callable[[int], int]: ...


class AugmentationBuild(Protocol):
    """Returns ``augment(x, generator)`` -> x: a batched transform on the device; it must
    draw its randomness from ``generator`` only (the run's, so runs are reproducible)."""

    def __call__(
        self, params: Any, *, input_shape: tuple[int, ...], mean: Any, std: Any, **context: Any
    ) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]: ...


@dataclass
class ProbeContext:
    """What a probe's measure receives each time it runs."""

    model: torch.nn.Module
    optimizer: Any
    data: TensorData
    x: torch.Tensor  # the probe batch, prepared (augmented if asked, channels_last on CUDA)
    y: torch.Tensor
    generator: torch.Generator  # the probe's own, for random vectors
    prepare: Callable[[torch.Tensor], torch.Tensor]  # what was done to x, for other inputs


class ProbeBuild(Protocol):
    """Returns ``measure(ctx: ProbeContext) -> {key: float}``; it runs on the schedule of
    its :class:`ProbeParams` (epochs / every / first_steps), with normalisation layers in
    the probe's ``mode`` and the global RNG forked around it. It takes gradients with
    ``torch.autograd.grad``, never into ``.grad``, so a run with probes trains exactly as
    without. A measure with ``state_dict``/``load_state_dict`` is checkpointed."""

    def __call__(
        self, params: ProbeParams, *, model: torch.nn.Module, optimizer: Any, **context: Any
    ) -> Callable[[ProbeContext], dict[str, float]]: ...


class ExecutorBuild(Protocol):
    """Returns an :class:`optlab.execution.executors.Executor`; the context is described there."""

    def __call__(
        self, params: Any, *, store: Any, stall_timeout: float, **context: Any
    ) -> Executor: ...


BUILDS: dict[str, Any] = {
    "dataset": DatasetBuild,
    "model": ModelBuild,
    "optimizer": OptimizerBuild,
    "lr_schedule": LRScheduleBuild,
    "batch_schedule": BatchScheduleBuild,
    "augmentation": AugmentationBuild,
    "probe": ProbeBuild,
    "executor": ExecutorBuild,
}

__all__ = [
    "AugmentationBuild",
    "BatchScheduleBuild",
    "DatasetBuild",
    "ExecutorBuild",
    "LRFactor",
    "LRScheduleBuild",
    "ModelBuild",
    "NoParams",
    "OptimizerBuild",
    "Params",
    "Plugin",
    "ProbeBuild",
    "ProbeContext",
    "ProbeParams",
    "TensorData",
    "check_schedule",
]
