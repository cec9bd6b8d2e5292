"""A per-client sliding-window rate limit (``limits.uploads_per_minute``)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimit:
    """At most ``count`` events per ``window_s`` seconds for each key.

    ``try_acquire(key)`` records an event and returns None, or, when the key is at its limit,
    records nothing and returns the whole seconds until the oldest event leaves the window (the
    ``Retry-After`` value). Keys with no recent events are forgotten, so memory follows the
    number of clients active within one window.
    """

    SWEEP_EVERY = 1024  # calls between sweeps of idle keys

    def __init__(self, count: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if count < 1:
            raise ValueError(f"a rate limit needs at least 1 event per window, got {count}")
        self.count = count
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._calls = 0

    def try_acquire(self, key: str) -> int | None:
        now = self._clock()
        self._calls += 1
        if self._calls % self.SWEEP_EVERY == 0:
            self._sweep(now)
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= self.window_s:
            events.popleft()
        if len(events) >= self.count:
            return max(1, math.ceil(self.window_s - (now - events[0])))
        events.append(now)
        return None

    def _sweep(self, now: float) -> None:
        for key in [k for k, e in self._events.items() if not e or now - e[-1] >= self.window_s]:
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)


__all__ = ["SlidingWindowLimit"]
