"""One file that carries a study off a machine whose disk is about to go (a notebook
service's session): ``optlab export STUDY --format bundle`` writes it, ``optlab merge
FILE.tar`` reads it into another store.

A bundle is a tar of a small store and its folders: ``bundle.duckdb`` with the study, its
runs, epochs and probes; ``bundle.runs/`` with their journals, logs and the study record;
``bundle.checkpoints/`` with their kept weights and the checkpoints an unfinished run resumes
from. It is made by merging the study into a new store (so its files are copied in and named
as that store names them) and packing that; reading it unpacks it beside the target store
and merges it from there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from optlab.errors import OptlabError
from optlab.locations import checkpoints_dir, runs_dir
from optlab.store.merge import merge

INNER = "bundle.duckdb"
SUFFIXES = (".tar", ".optlab")


def is_bundle(path: Path) -> bool:
    return path.suffix in SUFFIXES and path.is_file() and tarfile.is_tarfile(path)


def write_bundle(store: Path, study: str, to: Path) -> tuple[Path, int]:
    """Pack ``study`` of ``store`` into the file ``to`` (written whole, then renamed into
    place); returns it and the number of runs it holds."""

    to = to if to.suffix in SUFFIXES else to.with_name(to.name + ".tar")
    with _scratch(to.parent) as folder:
        inner = folder / INNER
        (done,) = merge(inner, [store], studies=[study])
        part = to.with_name(f".{to.name}.part-{os.getpid()}")
        try:
            with tarfile.open(part, "w") as tar:
                for path in (inner, runs_dir(inner), checkpoints_dir(inner)):
                    if path.exists():
                        tar.add(path, arcname=path.name)
            os.replace(part, to)
        finally:
            part.unlink(missing_ok=True)
    return to, done.runs_new


@contextlib.contextmanager
def unpacked(bundle: Path, beside: Path) -> Iterator[Path]:
    """The bundle's store, unpacked in a scratch folder beside ``beside`` (the target store:
    the same disk, so its files are copied, not sent over)."""
    with _scratch(beside.parent) as folder:
        try:
            with tarfile.open(bundle) as tar:
                tar.extractall(folder, filter="data")  # nothing outside the folder
        except (tarfile.TarError, OSError) as e:
            raise OptlabError(f"{bundle}: not a readable optlab bundle ({e})") from None
        inner = folder / INNER
        if not inner.is_file():
            raise OptlabError(f"{bundle}: not an optlab bundle (no {INNER} in it)")
        yield inner


@contextlib.contextmanager
def _scratch(near: Path) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=".optlab-bundle-", dir=near))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
