"""optlab: a laboratory for optimizer science.

From Python (:mod:`optlab.api`): ``load_study``, ``study_runs``, ``open_store`` (a read-only
``Store`` with ``sql``, ``runs``, ``epochs``, ``probes``, ``plot`` and ``analyze``).

For plugins, the contract (:mod:`optlab.plugins.contract`): ``Plugin``, ``Params``, ``NoParams``,
``ProbeParams``, ``ProbeContext``, ``TensorData``, ``check_schedule`` and the build
protocols. Imported on first use, so ``import optlab`` stays light.
"""

from __future__ import annotations

from typing import Any

from optlab.version import __version__

_CONTRACT = (
    "Plugin",
    "Params",
    "NoParams",
    "ProbeParams",
    "ProbeContext",
    "TensorData",
    "check_schedule",
    "Executor",
)


_API = ("load_study", "study_runs", "open_store", "Store", "train", "Trained")


def __getattr__(name: str) -> Any:
    if name == "Executor":  # the protocol executors follow (optlab.execution.executors)
        from optlab.execution import executors  # on first use: `import optlab` stays light

        return executors.Executor
    if name in _CONTRACT:
        from optlab.plugins import contract  # on first use: `import optlab` stays light

        return getattr(contract, name)
    if name in _API:
        from optlab import api  # on first use: `import optlab` stays light

        return getattr(api, name)
    raise AttributeError(f"module 'optlab' has no attribute {name!r}")


__all__ = ["__version__", *_CONTRACT, *_API]
