"""Garbage collection for a long-running media server.

aiortc's peer connections are reference cycles (event emitters, transports, senders), so a closed
connection is freed only by the cyclic collector — and with it its native encoder threads and
buffers. Left to the collector's own schedule, a server that sees many short sessions holds dozens
of dead encoders (measured: +2 native threads per session until a full collection, 16 more after 60
sessions; ``avatar bench cycles``). And a full collection of a heap that holds the engine's models
(mediapipe, torch: ~170 000 objects) takes ~80 ms, a stall every live session would see.

So: after start-up, ``freeze_startup_objects`` moves everything alive (models, the default avatar,
modules) out of the collector's sight (``gc.freeze``), which makes a full collection cost ~2 ms; and
``collect_soon`` runs one right after a peer connection is closed. Only then: where the app runs
inside another process that froze nothing (tests, an embedding program), a full collection walks
that whole heap (measured in the test process: ~490 000 objects, 300-360 ms, a stall of every live
session), so the interpreter's own schedule is left alone.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

_pending: asyncio.TimerHandle | None = None
SLOW_COLLECTION_MS = 50.0


async def freeze_startup_objects(_app=None) -> None:
    """Collect once, then freeze what is left (an aiohttp on_startup hook: after the engine is loaded)."""
    gc.collect()
    gc.freeze()
    log.debug("gc: %d start-up objects frozen", gc.get_freeze_count())


def collect_soon(delay_s: float = 0.5) -> None:
    """One full collection ``delay_s`` from now on the running loop (calls in the meantime share it):
    aiortc finishes its own closing tasks first. Nothing unless the heap is frozen (then it is cheap)."""
    global _pending
    if gc.get_freeze_count() == 0:
        return
    if _pending is not None and not _pending.cancelled():
        return
    _pending = asyncio.get_running_loop().call_later(delay_s, _collect)


def _collect() -> None:
    global _pending
    _pending = None
    start = time.perf_counter()
    found = gc.collect()
    took_ms = (time.perf_counter() - start) * 1000
    level = logging.WARNING if took_ms > SLOW_COLLECTION_MS else logging.DEBUG
    log.log(level, "gc: %d objects collected in %.1f ms", found, took_ms)
