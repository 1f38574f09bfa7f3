"""Executors: where a study's runs are trained. Plugins in the ``optlab.executors`` group.

``local`` (the default, :mod:`~optlab.execution.executors.local`) is the asyncio pool of
worker processes on this machine (:mod:`~optlab.execution.executors.pool`); ``ray``
(:mod:`~optlab.execution.executors.ray_cluster`) runs the same workers as Ray actors across
a cluster, through the relay any executor of remote workers can use
(:mod:`~optlab.execution.executors.relay`, no Ray in it). Either way the coordinator on this
machine receives every event and alone writes the store.

This module holds what they share: the :class:`Executor` protocol, the options a user gives
one (``--executor-opt KEY=VALUE``) and :func:`create`. An executor is a module here with
its class, its ``build`` and its :class:`~optlab.plugins.plugin.Plugin` (``local`` shows
how), named by an entry point in the ``optlab.executors`` group.

An executor plugin's ``build(params, **context)`` returns an :class:`Executor`. The context:

- ``store``: the store's path (the executor writes run logs and journals beside it);
- ``stall_timeout``: seconds a worker may go without progress before it is killed;
- ``data_dir``: where this machine keeps datasets (a node may use its own);
- ``checkpoints_shared``: the user named ``--checkpoint-dir``, a folder every worker can
  reach; otherwise checkpoints live beside the store, on this machine only;
- ``datasets``: the study's distinct dataset tables, for nodes that prepare their own.

An executor plugin may also give ``check(params, gpus=..., per_gpu=...,
workers=...)``: what can be checked of the slot options before anything slow is done
(before the study's datasets are fetched), raising UsageError; `optlab run` calls it first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pydantic import Field, ValidationError

from optlab.errors import UsageError
from optlab.execution.devices import Slot
from optlab.execution.executors.work import WorkQueue
from optlab.plugins.plugin import Params, Plugin
from optlab.plugins.registry import default_registry
from optlab.study.expand import RunSpec

Sink = Callable[[dict[str, Any]], None]
TaskExtra = Callable[[RunSpec, Slot], dict[str, Any]]

DEFAULT = "local"  # the executor a study runs on unless --executor names another


class Executor(Protocol):
    """What the coordinator drives: it asks for slots, then hands the executor a work queue
    and a sink, and the executor gives back every event of every run it trains."""

    name: str

    def make_slots(
        self, gpus: str | None, per_gpu: int, workers: int | None, runs: int | None
    ) -> list[Slot]:
        """The worker slots for ``--gpus``/``--per-gpu``/``--workers``; ``runs`` (when known)
        caps the default number of CPU slots. Raises UsageError for what cannot be had."""

    def where(self, slots: list[Slot]) -> str:
        """A few words for the start line: ``2 GPU(s) x 4``, ``CPU``, ``ray: 3 nodes``."""

    def notes(
        self, slots: list[Slot], per_gpu: int, workers: int | None, runs: list[RunSpec]
    ) -> list[str]:
        """What the user should hear before the slots start (options that do nothing here,
        runs that will be slow where they train); each printed as ``note: ...``."""

    async def run(
        self, work: WorkQueue, slots: list[Slot], sink: Sink, task_extra: TaskExtra
    ) -> None:
        """Take runs from ``work`` and train each on a free slot, until the queue is closed
        and empty or :meth:`halt` was called; the coordinator may put runs in it while
        others train (first: a run going on past a rung), and hold it open while it asks
        the store for more (final runs). Every event of a run goes to ``sink``, in order
        per run; besides the workers' events it may send ``assigned`` (run_id, worker),
        ``silent`` (run_id, worker, seconds) and ``note`` (text). ``task_extra(run, slot)``
        is what the worker is told beside the run (its checkpoint folder, where it may
        resume, its thread count, where it stops). Cancelling it stops the workers and
        leaves the runs resumable."""

    def halt(self) -> None:
        """Start no more runs (a full disk)."""

    def nodes(self) -> dict[str, int]:
        """Where the slots are running now: node name -> slots."""

    def close(self) -> None:
        """Let go of what :func:`build` acquired (a Ray connection)."""


class RayParams(Params):
    address: str | None = Field(
        None,
        description="A running cluster: 'auto' (the one this machine belongs to) or "
        "HOST:PORT of its head; none starts Ray on this machine alone.",
    )


def option_name(key: str) -> str:
    """How the user gives an executor option: --address (a shorthand), else --executor-opt."""
    return "--address" if key == "address" else f"--executor-opt {key}"


def parse_options(pairs: list[str], address: str | None) -> dict[str, str]:
    """``--executor-opt KEY=VALUE`` (repeatable) and the ``--address`` shorthand, as the
    executor's options; one line for what is not KEY=VALUE or is given twice."""

    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UsageError(f"--executor-opt {pair!r}: give KEY=VALUE, such as address=auto")
        if key in options:
            raise UsageError(f"--executor-opt {key}: given twice; give it once")
        options[key] = value.strip()
    if address is not None:
        if "address" in options and options["address"] != address:
            raise UsageError("--address and --executor-opt address= disagree; give one")
        options["address"] = address
    return options


# Declared here rather than in its module, which imports ray: listed, with how to install
# it, where Ray is not installed.
ray = Plugin(
    "Ray actors across a cluster, one per slot; needs pip install 'optlab[ray]'",
    RayParams,
    "optlab.execution.executors.ray_cluster:build",
)


def check(
    name: str, params: dict[str, Any], gpus: str | None, per_gpu: int, workers: int | None
) -> None:
    """What can be checked of ``--executor NAME``, its options and the slot options before
    anything slow: one line (UsageError) for what is wrong."""
    plugin = _plugin(name)
    validated = _validated(name, plugin, params)
    if plugin.check is not None:
        plugin.check(validated, gpus=gpus, per_gpu=per_gpu, workers=workers)


def _plugin(name: str) -> Plugin:
    return default_registry().get("executor", name)


def create(name: str, params: dict[str, Any], **context: Any) -> Executor:
    """The executor ``name`` built with ``params`` (its own options, as strings or values:
    ``--executor-opt KEY=VALUE``; ``--address`` is ``address``) and the context."""
    plugin = _plugin(name)
    validated = _validated(name, plugin, params)
    try:
        build = plugin.builder()
    except ImportError as e:
        raise UsageError(
            f"--executor {name} needs {e.name or 'a package'}, which is not "
            f"installed: pip install 'optlab[{name}]'"
        ) from None
    return build(validated, **context)


def _validated(name: str, plugin: Plugin, params: dict[str, Any]) -> Params:
    given = {k: v for k, v in params.items() if v is not None}
    takes = ", ".join(plugin.params.model_fields) or "none"
    try:
        return plugin.params(**given)
    except ValidationError as e:
        first = e.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        if first["type"] == "extra_forbidden":
            unknown = [k for k in given if k not in plugin.params.model_fields]
            options = ", ".join(option_name(k) for k in unknown)
            raise UsageError(
                f"{options}: not an option of --executor {name}"
                + ("" if unknown == ["address"] else f" (it takes: {takes})")
            ) from None
        raise UsageError(f"{option_name(key)} {given.get(key)!r}: {first['msg']}") from None
