"""The event schema workers report (JSON lines), shared by worker, pool and store.

Every event has ``type`` and ``run_id``. Types:

- ``started``: the run starts from scratch: ``provenance`` (versions, git sha, device,
  threads, environment seen), ``config`` and ``seed`` (so a store can be rebuilt from the
  journals alone), ``input_shape`` and ``num_classes`` (to rebuild the model for its weights).
- ``resumed``: the run continues from the checkpoint at ``epoch`` (``checkpoint``, its file;
  ``skipped``, newer files that could not be used and why), with what ``started`` carries;
  ``past_rung`` when successive halving let it go on (not another attempt).
- ``epoch``: one row per finished epoch, with the fields in :data:`EPOCH_FIELDS`.
- ``probe``: ``epoch``, ``step``, ``probe`` and ``values`` ({key: value}); epoch 0 is
  before training.
- ``checkpoint``: a checkpoint was written after ``epoch`` (``path``, ``bytes``, ``seconds``).
- ``finished`` / ``failed`` / ``diverged``: terminal; the last two carry ``error``;
  ``finished`` carries ``weights`` (the saved file, or null) and ``elapsed`` (seconds over
  all attempts).
- ``paused``: the run reached a rung of its block's successive halving (``epoch``), wrote
  its checkpoint there and handed the run back; the attempt ends, the run does not.
- ``held``: the session's time (``optlab run --stop-after``) was up: the run wrote its
  checkpoint at the end of the epoch in progress (``epoch``) and handed itself back; the
  attempt ends, the run is left interrupted (resumable) for the next `optlab run`.
- ``rung``: the coordinator's decision at a rung (appended to the run's journal by the
  coordinator, never by a worker): ``epoch``, ``decision`` (``continue``, ``stop`` or
  ``wait`` for the rest of its group), ``metric``, ``value``, ``rank`` of ``of``
  configurations with the best ``keep`` going on, ``rule`` and ``reason`` (a sentence). A
  ``stop`` ends the run as ``stopped``: a result, like diverged.

Sent to the pool only, never journaled: ``ready`` (a worker is up), ``idle`` (it is done
with a run and its files, after the run's terminal event), ``heartbeat`` (every few
seconds: ``progress`` counts steps, so a hung worker shows as one that makes none), and
``disk_full`` (the worker could not write its journal or a checkpoint and exits; the run
stays resumable). Events the pool makes itself carry ``origin = "pool"``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, TextIO

from optlab.states import Event, State, ending

# an attempt's last event
TERMINAL = (Event.FINISHED, Event.FAILED, Event.DIVERGED, Event.PAUSED, Event.HELD)


def ends_run(event: dict[str, Any]) -> bool:
    """Whether ``event`` leaves its run with a result or a failure (not resumable as is)."""
    return ending(event) is not None


EPOCH_FIELDS = (
    "epoch",  # 1-based index of the finished epoch
    "step",  # optimizer steps so far
    "samples",  # training samples processed so far
    "sfo",  # stochastic first-order oracle count: examples whose gradient was
    # computed so far, once per gradient evaluation (SAM: two a step)
    "epoch_lr",  # learning rate in force at the epoch's last step
    "epoch_batch_size",  # batch size in force during the epoch
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "seconds",  # training time of the epoch (evaluation and probes apart)
    "eval_seconds",
    "val_loss",  # on the validation split held out of the training set, when there is one
    "val_acc",
    "probe_seconds",  # time spent in probes during and after the epoch (not in seconds)
    "sfo_full_batches",  # SFO counting an epoch's last, partial batch as a whole one (the
    # seed 004 reference's count); sfo counts the samples really used
    "comm_rounds",  # communication rounds so far: local SGD's averagings, else one per step
)


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged loss (or probe value) is reported as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def encode(event: dict[str, Any]) -> str:
    return json.dumps({k: _clean(v) for k, v in event.items()}, separators=(",", ":"))


def decode(line: str | bytes) -> dict[str, Any]:
    return json.loads(line)


def parse_journal(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The events of a journal's bytes, and how many leading bytes hold them. A torn tail (a
    crash mid-write: half a line, bytes that are not UTF-8, a block of zeros) costs the lines
    from the first unreadable one on, and only those."""
    events: list[dict[str, Any]] = []
    good = 0
    while good < len(data):
        end = data.find(b"\n", good)
        line = data[good : len(data) if end < 0 else end + 1]
        try:
            event = decode(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        if not isinstance(event, dict) or "type" not in event:
            break
        events.append(event)
        good += len(line)
    return events, good


def read_journal(path) -> list[dict[str, Any]]:
    """A run's append-only event log, without a torn tail (see :func:`parse_journal`)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return parse_journal(data)[0]


def open_journal(path: str | os.PathLike, *, fresh: bool, cut: bool) -> TextIO:
    """A run's journal for writing: afresh (``fresh``: its run starts) or appended to, a
    torn tail cut first (``cut``: its run resumes after a crash)."""
    if cut:
        cut_torn_tail(path)
    return open(path, "w" if fresh else "a", encoding="utf-8")


def write_events(journal: TextIO, events: list[dict[str, Any]]) -> None:
    """Append events as lines, then flush and fsync: once this returns they survive a crash."""
    for event in events:
        journal.write(encode(event) + "\n")
    journal.flush()
    os.fsync(journal.fileno())


def cut_torn_tail(path: str | os.PathLike) -> None:
    """Drop an unreadable tail (cut mid-write, not UTF-8, zero-filled) before appending, so
    the attempt that resumes is not hidden behind it."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            good = parse_journal(data)[1]
            if good < len(data):
                f.truncate(good)
            elif data and not data.endswith(b"\n"):
                f.write(b"\n")  # a whole last event, cut just before its newline
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Progress:
    """What a run's journal alone says of its latest attempt chain."""

    epochs: int  # epochs done
    checkpoint: int  # the epoch of the last checkpoint journaled (0: none)
    ended: State | None  # the state its end left it in (done, stopped, ...), if it ended
    ended_at: float | None = None  # when (the ending event's time)
    threads: int | None = None  # the thread count its first attempt recorded


def progress(events: list[dict[str, Any]]) -> Progress | None:
    """A run's progress from its journal's events, or None when it has none."""
    epochs: set[int] = set()
    checkpoint, ended, ended_at, threads = 0, None, None, None
    for ev in events:
        kind = ev.get("type")
        if kind == Event.STARTED:
            epochs, checkpoint, ended = set(), 0, None
            threads = (ev.get("provenance") or {}).get("threads")
        elif kind == Event.RESUMED:
            epochs = {e for e in epochs if e <= ev["epoch"]}
            checkpoint, ended = ev["epoch"], None
            threads = threads or (ev.get("provenance") or {}).get("threads")
        elif kind == Event.EPOCH:
            epochs.add(ev["epoch"])
        elif kind == Event.CHECKPOINT:
            checkpoint = ev["epoch"]
        now = ending(ev)
        if now is not None:
            ended, ended_at = now, ev.get("time")
    return Progress(len(epochs), checkpoint, ended, ended_at, threads) if events else None
