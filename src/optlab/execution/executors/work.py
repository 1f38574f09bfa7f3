"""The runs still to start, shared by an executor's slots and the coordinator.

Slots :meth:`~WorkQueue.take` a run and :meth:`~WorkQueue.release` it when its attempt
ends; the coordinator may :meth:`~WorkQueue.push_front` runs while others train (a run that
successive halving lets go on past a rung), or :meth:`~WorkQueue.hold` it open while it
asks the store whether final runs are due. ``take`` waits while the queue is empty and a
run is in flight (or the queue is held), since more work may come, and gives None once
nothing is queued, in flight or held, or the queue is closed (a full disk, Ctrl-C).
Single-threaded: every method runs in the event loop, and the coordinator's sink is called
from a slot's read loop before that slot releases its run.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from optlab.study.expand import RunSpec


class WorkQueue:
    def __init__(self, specs: Iterable[RunSpec] = ()):
        self.queue: deque[RunSpec] = deque(specs)
        self.in_flight = 0
        self.closed = False
        self.held = 0  # more work may come though nothing is in flight (see hold)
        self._waiters: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self.queue)

    def done(self) -> bool:
        return self.closed or (not self.queue and self.in_flight == 0 and not self.held)

    async def take(self) -> RunSpec | None:
        while True:
            if self.closed:
                return None
            if self.queue:
                self.in_flight += 1
                return self.queue.popleft()
            if self.in_flight == 0 and not self.held:
                return None
            await self._changed()

    async def drained(self) -> None:
        """Until nothing is queued or in flight (or the queue is closed)."""
        while not self.done():
            await self._changed()

    def release(self, again: RunSpec | None = None) -> None:
        """A run's attempt is over; with ``again``, it goes back to the front."""
        self.in_flight -= 1
        if again is not None:
            self.queue.appendleft(again)
        self._notify()

    def push_front(self, specs: list[RunSpec]) -> None:
        """Runs to start before those queued, in the order given."""
        self.queue.extendleft(reversed(specs))
        self._notify()

    def push_back(self, specs: list[RunSpec]) -> None:
        """Runs to start after those queued."""
        self.queue.extend(specs)
        self._notify()

    def hold(self) -> None:
        """Keep the slots waiting, though nothing is queued or in flight, until
        :meth:`unhold`: the coordinator is asking the store whether runs are to be added."""
        self.held += 1

    def unhold(self) -> None:
        self.held -= 1
        self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    async def _changed(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.add(future)
        try:
            await future
        finally:
            self._waiters.discard(future)

    def _notify(self) -> None:
        for future in self._waiters:
            if not future.done():
                future.set_result(None)
