"""The API's answers kept for a while, so that pages polling a running study cost its
training little: however many pages ask, an answer is made at most once per its freshness,
and the server spends at most a stated share of one core making answers.

An answer that took t seconds to make is fresh for 5 t (at least its floor: a second for
most). While one is being made, whoever asks for it too waits for it rather than make it
again (an analysis of 100,000 runs takes seconds). Past its freshness it is made again,
unless the answers made in the last :data:`WINDOW` seconds took more than :data:`SHARE` of
that time: then the kept one is sent, and its age is said in the ``X-Optlab-Age`` header.
So five pages polling every second beside a study on two cores take from it about what
one page would, and never more than :data:`SHARE` of a core (BENCHMARKS (o), (y)).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

SHARE = 0.03  # of one core: the most the server spends making answers, over WINDOW
WINDOW = 20.0  # seconds over which that share is reckoned
KEPT = 512  # answers kept at most (the oldest half forgotten past it)


class Answers:
    """Encoded answers by key (a request's path and query)."""

    def __init__(self, share: float = SHARE, window: float = WINDOW) -> None:
        self.share, self.window = share, window
        self._kept: dict[str, tuple[float, float, bytes]] = {}  # key: (made at, fresh, body)
        self._making: dict[str, threading.Lock] = {}
        self._spent: collections.deque[tuple[float, float]] = collections.deque()  # (at, s)
        self._lock = threading.Lock()

    def busy(self, now: float) -> float:
        """The share of the last window spent making answers."""
        with self._lock:
            while self._spent and self._spent[0][0] < now - self.window:
                self._spent.popleft()
            return sum(s for _, s in self._spent) / self.window

    def get(self, key: str, floor: float, make: Callable[[], bytes]) -> tuple[bytes, float]:
        """The answer for ``key`` and its age in seconds (0 when made for this request)."""
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        with making:
            now = time.monotonic()
            hit = self._kept.get(key)
            if hit is not None and (now - hit[0] < hit[1] or self.busy(now) > self.share):
                return hit[2], now - hit[0]
            started = time.monotonic()
            body = make()
            took = time.monotonic() - started
            with self._lock:
                self._spent.append((time.monotonic(), took))
                self._kept[key] = (time.monotonic(), max(floor, 5 * took), body)
                if len(self._kept) > KEPT:
                    for old in sorted(self._kept, key=lambda k: self._kept[k][0])[: KEPT // 2]:
                        del self._kept[old]
                        self._making.pop(old, None)
            return body, 0.0
