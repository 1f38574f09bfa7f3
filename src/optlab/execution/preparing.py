"""Datasets made ready before any run starts: fetched into a data folder, once per machine.

``optlab run`` prepares the study's datasets on the machine it runs on; with the Ray executor
each node prepares its own data folder too, before its first run. Preparing is idempotent
(a plugin fetches only what is missing) and holds a lock on the folder, so slots on one
node, or two studies on one machine, do not download the same files at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from optlab.plugins.registry import Registry, default_registry

LOCK = ".optlab-prepare.lock"


def dataset_tables(runs: list[Any]) -> list[dict[str, Any]]:
    """The distinct dataset tables of ``runs``, in first-seen order."""
    seen: dict[str, dict[str, Any]] = {}
    for run in runs:
        table = run.config["dataset"]
        seen.setdefault(repr(sorted(table.items())), table)
    return list(seen.values())


def prepare(
    tables: list[dict[str, Any]], data_dir: str | Path, registry: Registry | None = None
) -> None:
    """Fetch what ``tables`` need into ``data_dir``; raises ValueError (what to do) or
    OSError when it cannot."""
    registry = registry or default_registry()
    work = []
    for table in tables:
        plugin = registry.get("dataset", table["name"])
        step = plugin.preparer()
        if step is not None:
            work.append((step, plugin.params(**{k: v for k, v in table.items() if k != "name"})))
    if not work:
        return
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for step, params in work:
            step(params, data_dir=str(folder))
    finally:
        os.close(fd)
