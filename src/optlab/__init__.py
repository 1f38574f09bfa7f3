"""optlab: a laboratory for optimizer science.

For plugins, the contract (:mod:`optlab.contract`): ``Plugin``, ``Params``, ``NoParams``,
``ProbeParams``, ``ProbeContext``, ``TensorData``, ``check_schedule`` and the build
protocols. Imported on first use, so ``import optlab`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_CONTRACT = ("Plugin", "Params", "NoParams", "ProbeParams", "ProbeContext", "TensorData",
             "check_schedule", "Executor")


def __getattr__(name: str) -> Any:
    if name in _CONTRACT:
        from optlab import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'optlab' has no attribute {name!r}")


__all__ = ["__version__", *_CONTRACT]
