"""Checkpoints inside a run (worker side): atomic, verified, the last K kept.

A checkpoint is taken at the end of an epoch (after its evaluation and probes) and holds
everything that decides the run's future: model, optimizer and grad-scaler state, every
random generator, the step/sample counters, the probes' state, the best weights so far (when
they are kept) and the run's elapsed seconds. So a run resumed from epoch E produces, on the
CPU, exactly the epoch rows E+1, E+2, ... of the run that never stopped.

File layout: ``epoch-000012.ckpt`` = an 8-byte magic, the format version, the payload's
length and SHA-256, then the payload (``torch.save`` of a dict of tensors and numbers). It is
written to a hidden temporary file, fsynced, renamed into place and the folder fsynced: a
crash leaves either the old set or the new one, never a torn file under a checkpoint's name.
A file whose length or hash does not match is skipped on load (and reported), and the
previous good one is used.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optlab.atomic import write_atomic

MAGIC = b"OPTLABCK"
FORMAT = 1
_HEADER = struct.Struct("<8sIQ32s")  # magic, format, payload length, sha256
_NAME = re.compile(r"^epoch-(\d{6})\.ckpt$")


class CheckpointError(Exception):
    """A checkpoint file that cannot be used, and why."""


def file_name(epoch: int) -> str:
    return f"epoch-{epoch:06d}.ckpt"


def listed(folder: Path) -> list[tuple[int, Path]]:
    """The checkpoint files in ``folder``, newest epoch first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def encode(state: dict[str, Any]) -> bytes:
    import torch  # torch: only where a run trains; the readers never import it

    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return _HEADER.pack(MAGIC, FORMAT, len(payload), hashlib.sha256(payload).digest()) + payload


def decode(data: bytes) -> dict[str, Any]:
    import torch  # torch: only where a run trains; the readers never import it

    return torch.load(io.BytesIO(payload_of(data)), map_location="cpu", weights_only=True)


def payload_of(data: bytes) -> bytes:
    """The payload of a checkpoint file's bytes, checked against its header (no torch)."""
    if len(data) < _HEADER.size:
        raise CheckpointError(f"truncated ({len(data)} bytes)")
    magic, fmt, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError("not an optlab checkpoint")
    if fmt > FORMAT:
        raise CheckpointError(f"written by a newer optlab (format {fmt})")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise CheckpointError(f"truncated ({len(payload)} of {length} bytes)")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("corrupt (its checksum does not match)")
    return payload


def newest_intact(folder: Path, upto: int) -> int:
    """The epoch of the newest checkpoint in ``folder`` at an epoch <= ``upto`` whose file
    matches its header (what a resume would start from, as far as can be told without
    loading it); 0 when there is none. For `optlab status`: no torch."""
    for epoch, path in listed(folder):
        if epoch > upto:
            continue
        try:
            payload_of(path.read_bytes())
        except (OSError, CheckpointError):
            continue
        return epoch
    return 0


def load(path: Path) -> dict[str, Any]:
    """The state a checkpoint file holds (CheckpointError when it cannot be used)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"unreadable ({e.strerror or e})") from None
    return decode(data)


@dataclass
class Found:
    state: dict[str, Any] | None
    path: Path | None
    skipped: list[str]  # "file: why", for each newer file that could not be used


def latest(folder: Path, run_id: str, upto: int) -> Found:
    """The newest good checkpoint of ``run_id`` at an epoch <= ``upto`` (the epochs the store
    already holds); the files that were passed over, and why."""
    skipped = []
    for epoch, path in listed(folder):
        if epoch > upto:
            skipped.append(f"{path.name}: after the last recorded epoch ({upto})")
            continue
        try:
            state = load(path)
        except CheckpointError as e:
            skipped.append(f"{path.name}: {e}")
            continue
        if state.get("run_id") != run_id or state.get("epoch") != epoch:
            skipped.append(f"{path.name}: belongs to another run")
            continue
        return Found(state, path, skipped)
    return Found(None, None, skipped)


def clear(folder: Path, keep_upto: int | None = None) -> None:
    """Remove checkpoints (all, or those after epoch ``keep_upto``) and stray temporary files:
    a run that starts over or resumes from an earlier epoch must never find them later."""
    if not folder.is_dir():
        return
    for epoch, path in listed(folder):
        if keep_upto is None or epoch > keep_upto:
            path.unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


class Policy:
    """When to checkpoint: at the end of every N-th epoch, and/or at the end of the first
    epoch after M minutes since the last checkpoint; never after the last epoch."""

    def __init__(
        self, every_epochs: int | None, every_minutes: float | None, keep: int, epochs: int
    ):
        self.every_epochs, self.every_minutes = every_epochs, every_minutes
        self.keep, self.epochs = keep, epochs
        self.last = time.monotonic()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Policy:
        c = config.get("checkpoint") or {}
        return cls(
            c.get("every_epochs"), c.get("every_minutes"), c.get("keep", 2), config["epochs"]
        )

    def due(self, epoch: int) -> bool:
        if epoch >= self.epochs:
            return False
        if self.every_epochs and epoch % self.every_epochs == 0:
            return True
        minutes = (time.monotonic() - self.last) / 60
        return bool(self.every_minutes) and minutes >= self.every_minutes

    def save(self, folder: Path, epoch: int, state: dict[str, Any]) -> tuple[Path, int]:
        data = encode(state)
        path = folder / file_name(epoch)
        write_atomic(path, data)
        for _, old in listed(folder)[self.keep :]:
            old.unlink(missing_ok=True)
        self.last = time.monotonic()
        return path, len(data)
