"""The words runs and workers speak in, declared once: a run's states, the event types a
worker (or the coordinator) journals, and which of them end what.

Both enums are ``StrEnum``: a member is its own string (``State.DONE == "done"``), so it
goes into SQL parameters, JSON and f-strings as the word itself. Everything else imports
these rather than spelling the words.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """A run's state in the store (``run_state.status``)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"
    STOPPED = "stopped"  # by successive halving at a rung: a result, like diverged
    INTERRUPTED = "interrupted"


STATES = tuple(State)  # in the order status and the page show them

# A run that has its answer: not planned again (failed runs are, with --retry-failed).
RESULTS = (State.DONE, State.DIVERGED, State.STOPPED)
# A run that ended one way or another (its epochs all count for progress).
ENDED = (State.DONE, State.FAILED, State.DIVERGED, State.STOPPED)
# A run that may still train: what `optlab run` plans, what recovery looks at.
UNFINISHED = (State.PENDING, State.RUNNING, State.INTERRUPTED)


class Event(StrEnum):
    """The type of a journaled or piped event (see :mod:`optlab.events`)."""

    STARTED = "started"
    RESUMED = "resumed"
    EPOCH = "epoch"
    PROBE = "probe"
    CHECKPOINT = "checkpoint"
    FINISHED = "finished"
    FAILED = "failed"
    DIVERGED = "diverged"
    PAUSED = "paused"
    HELD = "held"  # checkpointed and handed back at the session's end (--stop-after)
    RUNG = "rung"
    # to the pool only, never journaled
    READY = "ready"
    IDLE = "idle"
    HEARTBEAT = "heartbeat"
    DISK_FULL = "disk_full"


# The events that end a run's attempt, and the state each leaves the run in.
ENDINGS = {
    Event.FINISHED: State.DONE,
    Event.FAILED: State.FAILED,
    Event.DIVERGED: State.DIVERGED,
    Event.DISK_FULL: State.INTERRUPTED,
    Event.HELD: State.INTERRUPTED,
}


class Decision(StrEnum):
    """Successive halving's decision for a configuration at a rung."""

    CONTINUE = "continue"
    STOP = "stop"
    WAIT = "wait"


def ending(event: dict) -> State | None:
    """The state ``event`` leaves its run in when it ends the run with a result or a
    failure (``finished``, ``failed``, ``diverged``, a rung's ``stop``); None otherwise."""
    kind = event.get("type")
    if kind == Event.RUNG:
        return State.STOPPED if event.get("decision") == Decision.STOP else None
    if kind in (Event.DISK_FULL, Event.HELD):
        return None  # the run stays resumable
    return ENDINGS.get(kind)
