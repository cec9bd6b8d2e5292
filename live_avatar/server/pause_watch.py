"""``PauseWatch``: when this process stopped running Python, and for how long.

A viewer's stall is a gap in the frames it receives. A gap can come from generation (a block over its
budget: the session's stats say so), or from the process that sends or receives the frames not
running at all for a while: its event loop blocked by a callback, the GIL held by another thread, or a
garbage collection. The last two leave no trace in any counter. This watch is what told such gaps
apart: in 10-minute GPU runs (256x384, an H100) the viewer's stalls came with no block over budget;
the watch found the server never paused and the bench's own peer paused at every stall (its analysis
thread; bench/forked.py).

Two probes, both cheap:

* loop lag: a task asks to wake every ``interval_s``; waking more than ``threshold_s`` late is a pause of
  the event loop (its callbacks, or another thread holding the GIL), recorded from the time it was due;
* garbage collections (``gc.callbacks``, in whichever thread runs them): each one longer than
  ``threshold_s``, with its generation.

Events are kept with their ``time.monotonic()`` start (a process beside this one on the same machine
shares the clock, so a peer can line its gaps up with them), bounded in number.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Pause:
    at: float  # time.monotonic() when the pause began
    ms: float
    kind: str  # "loop" (the event loop woke late) or "gc0" / "gc1" / "gc2" (a collection of that generation)

    @property
    def end(self) -> float:
        return self.at + self.ms / 1000.0


class PauseWatch:
    def __init__(self, *, interval_s: float = 0.01, threshold_s: float = 0.05, kept: int = 500,
                 on_pause: Callable[[str, float], None] | None = None) -> None:
        """``on_pause(kind, seconds)`` is called for each pause recorded (e.g. a metrics histogram)."""
        if interval_s <= 0 or threshold_s < 0 or kept < 1:
            raise ValueError("need interval_s > 0, threshold_s >= 0, kept >= 1")
        self.interval_s, self.threshold_s = interval_s, threshold_s
        self._on_pause = on_pause
        self._unreported: deque[Pause] = deque(maxlen=kept)
        self.events: deque[Pause] = deque(maxlen=kept)  # the summaries derive from these
        self._gc_started: float | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start both probes (on the running loop)."""
        if self._task is not None:
            return
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._watch_loop())

    async def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch_loop(self) -> None:
        while True:
            due = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            late = time.monotonic() - due
            if late > self.threshold_s:
                self._record(Pause(at=due, ms=late * 1000.0, kind="loop"))
            while self._unreported:
                pause = self._unreported.popleft()
                self._on_pause(pause.kind, pause.ms / 1000.0)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.monotonic()
        elif self._gc_started is not None:
            took = time.monotonic() - self._gc_started
            if took > self.threshold_s:
                self._record(Pause(at=self._gc_started, ms=took * 1000.0, kind=f"gc{info.get('generation', '?')}"))
            self._gc_started = None

    def _record(self, pause: Pause) -> None:
        self.events.append(pause)
        if self._on_pause is not None:
            # reported from the watch's task, not here: a collection may run inside the code that
            # on_pause calls (prometheus-client's non-reentrant lock held), and re-entering it would deadlock
            self._unreported.append(pause)

    def since(self, t0: float) -> list[Pause]:
        return [p for p in self.events if p.end >= t0]

    def summary(self, since: float | None = None, *, listed: int = 50) -> dict:
        """Counts and maxima of the kept pauses (those that ended after ``since``, if given) and the
        longest ``listed`` of them in time order, each as [monotonic start s, ms, kind]."""
        events = list(self.events) if since is None else self.since(since)
        loop = [p.ms for p in events if p.kind == "loop"]
        collections = [p.ms for p in events if p.kind != "loop"]
        longest = sorted(sorted(events, key=lambda p: -p.ms)[:listed], key=lambda p: p.at)
        return {
            "threshold_ms": self.threshold_s * 1000.0,
            "loop_pauses": len(loop),
            "loop_pause_max_ms": max(loop, default=0.0),
            "gc_pauses": len(collections),
            "gc_pause_max_ms": max(collections, default=0.0),
            "events": [[round(p.at, 4), round(p.ms, 1), p.kind] for p in longest],
        }
