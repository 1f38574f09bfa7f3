"""Where a store's files live, and how the store names them.

A store ``X.duckdb`` and the folders beside it are one movable unit: ``X.runs/`` (a folder a
run: its journal and log; the study records) and ``X.checkpoints/`` (checkpoints and saved
weights). Paths inside those folders are recorded relative to them, as ``runs/RUN/log.txt``
and ``checkpoints/RUN/final.pt``, so a store copied or moved with its folders (or renamed
with them) keeps working. A path elsewhere (a shared ``--checkpoint-dir``, files another
store keeps) is recorded absolute.

Workers journal their events in that form too, so a journal read after a move (``optlab
rebuild``) or in another store (``optlab merge``) names the right files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROLES = ("runs", "checkpoints")
# The event fields that name files, by event type.
PATH_FIELDS = {
    "started": ("checkpoint_dir",),
    "resumed": ("checkpoint_dir", "checkpoint"),
    "checkpoint": ("path",),
    "finished": ("weights",),
}


def runs_dir(store: Path) -> Path:
    """Run logs and journals: ``optlab.duckdb`` -> ``optlab.runs/``."""
    return store.with_name(_owner(store).stem + ".runs")


def checkpoints_dir(store: Path) -> Path:
    """Checkpoints and saved weights: ``optlab.duckdb`` -> ``optlab.checkpoints/``."""
    return store.with_name(_owner(store).stem + ".checkpoints")


def journal_path(store: Path, run_id: str) -> Path:
    """A run's journal (its events, one JSON line each): ``optlab.runs/RUN/events.jsonl``."""
    return runs_dir(store) / run_id / "events.jsonl"


def log_path(store: Path, run_id: str) -> Path:
    """What a run's worker printed: ``optlab.runs/RUN/log.txt``."""
    return runs_dir(store) / run_id / "log.txt"


def other_name(store: Path) -> Path | None:
    """Another name of the store file (a hard link) in the same folder, whose folders the
    store uses because they exist and its own do not: so a store run through ``s.duckdb``
    and later through a link ``h.duckdb`` keeps its journals in ``s.runs/``, where a
    rebuild through either name finds them."""
    try:
        st = os.stat(store)
    except OSError:
        return None
    if st.st_nlink < 2 or store.with_name(store.stem + ".runs").is_dir():
        return None
    known = _OTHER_NAMES.get((str(store), st.st_dev, st.st_ino))
    if known is not None and known.with_name(known.stem + ".runs").is_dir():
        return known
    try:
        names = sorted(os.listdir(store.parent or "."))
    except OSError:
        return None
    for name in names:
        other = store.with_name(name)
        if name == store.name or not other.with_name(other.stem + ".runs").is_dir():
            continue
        try:
            there = os.stat(other)
        except OSError:
            continue
        if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino):
            _OTHER_NAMES[(str(store), st.st_dev, st.st_ino)] = other
            return other
    return None


_OTHER_NAMES: dict[tuple[str, int, int], Path] = {}  # found before: a study asks per run


def _owner(store: Path) -> Path:
    return other_name(store) or store


def roots(store: Path) -> dict[str, str]:
    """The store's own folders, absolute, by role (what workers are given)."""
    return {
        "runs": os.path.abspath(runs_dir(store)),
        "checkpoints": os.path.abspath(checkpoints_dir(store)),
    }


def recorded(path: str | os.PathLike | None, roots: dict[str, str]) -> str | None:
    """How the store records ``path``: relative to the store's folder that holds it
    (``checkpoints/RUN/final.pt``), else absolute. A recorded form is kept as it is."""
    if path is None:
        return None
    text = str(path)
    if not os.path.isabs(text):
        return text
    text = os.path.abspath(text)
    for role in ROLES:
        root = roots[role]
        if text == root:
            return role
        if text.startswith(root + os.sep):
            return role + "/" + text[len(root) + 1 :].replace(os.sep, "/")
    return text


def resolve(text: str | None, roots: dict[str, str]) -> Path | None:
    """The file a recorded path names (see :func:`recorded`)."""
    if text is None:
        return None
    if os.path.isabs(text):
        return Path(text)
    role, _, rest = text.partition("/")
    if role in ROLES:
        return Path(roots[role], *([rest] if rest else []))
    return Path(roots["runs"]).parent / text  # a path relative to the store's folder


def inside(path: Path, roots: dict[str, str]) -> bool:
    """Whether ``path`` lies in one of the store's own folders."""
    text = os.path.abspath(path)
    return any(text.startswith(roots[role] + os.sep) for role in ROLES)


def record_event(event: dict[str, Any], roots: dict[str, str]) -> dict[str, Any]:
    """``event`` with the files it names in recorded form."""
    return map_event(event, lambda _, p: recorded(p, roots))


def map_event(event: dict[str, Any], fn: Any) -> dict[str, Any]:
    """``event`` with each file it names replaced by ``fn(field, path)``."""
    fields = PATH_FIELDS.get(event.get("type", ""), ())
    if not any(event.get(f) for f in fields):
        return event
    return {**event, **{f: fn(f, event[f]) for f in fields if event.get(f)}}
