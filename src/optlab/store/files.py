"""The files beside a store: its runs folder (journals, logs, study records) and its
checkpoints folder, and the note for a store file with other names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from optlab import locations
from optlab.atomic import write_atomic


def artefacts_dir(store: Path) -> Path:
    """Run logs and journals live beside the store: ``optlab.duckdb`` -> ``optlab.runs/``."""
    return locations.runs_dir(store)


def checkpoints_dir(store: Path) -> Path:
    """Checkpoints and saved weights, by default: ``optlab.duckdb`` -> ``optlab.checkpoints/``."""
    return locations.checkpoints_dir(store)


journal_path = locations.journal_path  # the folder rules live in optlab.locations
log_path = locations.log_path


def other_names(path: Path) -> str | None:
    """A note when the store file has other names (hard links): its folders go by the name
    it is given (``NAME.runs/``), or by another name in the same folder whose folders exist,
    so a rebuild or run through a name elsewhere would not see this one's journals."""
    try:
        links = os.stat(path).st_nlink
    except OSError:
        return None
    if links < 2:
        return None
    other = locations.other_name(path)
    if other is not None:
        return (
            f"{path} has {links} names (hard links); its journals and checkpoints go in "
            f"{artefacts_dir(path).name}/ and {checkpoints_dir(path).name}/, the folders of "
            f"its name {other.name}"
        )
    return (
        f"{path} has {links} names (hard links); its journals and checkpoints go in "
        f"{artefacts_dir(path).name}/ and {checkpoints_dir(path).name}/ beside this name, so "
        "use this name for it from now on (or copy the store instead of linking it)"
    )


def studies_record_dir(store: Path) -> Path:
    return artefacts_dir(store) / "studies"


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value).encode())
