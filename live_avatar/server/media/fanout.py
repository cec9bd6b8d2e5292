"""Fan-out of a session's output slots to several consumers (aiortc MediaRelay pattern).

Generation happens once per session; every consumer (the speaker's peer connection, later viewer
pages, WHEP subscribers, an RTMP push, a recorder) gets its own bounded queue. Publishing never
waits: a consumer whose queue is full loses its *oldest* slot, so a slow consumer only hurts itself
and never the generator or the other consumers.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Subscription(Generic[T]):
    def __init__(self, fanout: "Fanout[T]", sub_id: int, maxsize: int, name: str) -> None:
        self._fanout = fanout
        self.id = sub_id
        self.name = name
        self._queue: asyncio.Queue[T | None] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0  # items this consumer lost because its queue was full
        self.skipped_stale = 0  # items it skipped to catch up (see get_fresh)
        self.closed = False

    def _offer(self, item: T | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            if item is not None:
                self.dropped += 1
        self._queue.put_nowait(item)

    async def get(self) -> T | None:
        """Next item, or None once the fan-out (the session) has ended or this subscription closed."""
        if self.closed and self._queue.empty():
            return None
        return await self._queue.get()

    async def get_fresh(self, is_stale: Callable[[T], bool]) -> T | None:
        """Like ``get``, but a stale item is skipped while a newer one is already queued: a
        consumer that fell behind catches up instead of staying late for good."""
        item = await self.get()
        while item is not None and is_stale(item) and not self._queue.empty():
            item = self._queue.get_nowait()
            self.skipped_stale += 1
        return item

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Unsubscribe; a pending ``get`` returns None."""
        if not self.closed:
            self.closed = True
            self._fanout._remove(self)
            self._offer(None)


class Fanout(Generic[T]):
    def __init__(self, default_maxsize: int = 4) -> None:
        self._default_maxsize = default_maxsize
        self._subs: dict[int, Subscription[T]] = {}
        self._ids = itertools.count(1)
        self.closed = False

    def subscribe(self, name: str = "consumer", maxsize: int | None = None) -> Subscription[T]:
        sub = Subscription(self, next(self._ids), maxsize or self._default_maxsize, name)
        if self.closed:
            sub.closed = True
            sub._offer(None)
        else:
            self._subs[sub.id] = sub
        return sub

    def publish(self, item: T) -> None:
        for sub in list(self._subs.values()):
            sub._offer(item)

    def _remove(self, sub: Subscription[T]) -> None:
        self._subs.pop(sub.id, None)

    @property
    def subscribers(self) -> list[Subscription[T]]:
        return list(self._subs.values())

    def close(self) -> None:
        """End of stream: every consumer's ``get`` returns None after its queued items."""
        self.closed = True
        for sub in list(self._subs.values()):
            sub.closed = True
            sub._offer(None)
        self._subs.clear()
