"""The base of every threaded output: slots go from the session's fan-out (event loop) to a worker
thread through a bounded queue that drops its oldest slot when full, so neither the generator nor
the event loop ever waits for an encoder, a network write or a camera."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from typing import Any

from live_avatar.server.media.playout import OutputSlot

log = logging.getLogger(__name__)

SUBSCRIPTION_SLOTS = 8  # the fan-out queue: only needs to cover one event-loop hiccup
STOP_JOIN_S = 10.0  # how long stop() waits for the worker to flush and close


def new_output_id() -> str:
    return uuid.uuid4().hex[:16]  # also the recording's file name: unguessable, no client input


class ThreadedOutput:
    """Subclasses implement ``work()`` in the worker thread, reading slots with ``next_slot``."""

    type = "output"

    def __init__(self, session: Any, queue_slots: int = 50) -> None:
        self.id = new_output_id()
        self.session = session
        self.session_id = session.id
        self.state = "starting"
        self.error: str | None = None
        self.created_at = time.time()
        self.slots_dropped = 0  # slots this output lost because its worker fell behind
        self.cpu_s = 0.0  # CPU time its worker thread used (encoding, muxing, writing)
        self._cpu_start = 0.0
        self._queue: queue.Queue[OutputSlot | None] = queue.Queue(maxsize=queue_slots)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pump_task: asyncio.Task | None = None
        self._sub = None

    # -- event loop side ---------------------------------------------------------------------
    def start(self) -> None:
        self._sub = self.session.fanout.subscribe(f"{self.type}-{self.id}", maxsize=SUBSCRIPTION_SLOTS)
        self._thread = threading.Thread(target=self._run, name=f"{self.type}-{self.id}", daemon=True)
        self._thread.start()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name=f"{self.type}-{self.id}-pump")

    async def _pump(self) -> None:
        try:
            while (slot := await self._sub.get()) is not None:
                self._put(slot)
        finally:
            self._put(None)  # end of the session: the worker finishes its file/stream

    def _put(self, item: OutputSlot | None) -> None:
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    if self._queue.get_nowait() is not None:
                        self.slots_dropped += 1
                except queue.Empty:
                    pass

    async def stop(self) -> None:
        """End the output: the worker flushes and closes (in its thread; this waits for it off the loop)."""
        self._stopping.set()
        if self._sub is not None:
            self._sub.close()  # the pump ends and queues the end marker
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, STOP_JOIN_S)
        if self._pump_task is not None:
            self._pump_task.cancel()

    # -- worker thread side ------------------------------------------------------------------
    def next_slot(self, timeout: float = 0.5) -> OutputSlot | None | bool:
        """The next slot; None at the end; False when none came within ``timeout``."""
        self.cpu_s = time.thread_time() - self._cpu_start
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return False

    def discard_queued(self) -> bool:
        """Throw away what is queued (while reconnecting); False once the end marker was seen."""
        while True:
            try:
                if self._queue.get_nowait() is None:
                    return False
            except queue.Empty:
                return True

    def _run(self) -> None:
        self._cpu_start = time.thread_time()
        try:
            self.work()
        except Exception as exc:  # a bug or an unexpected failure: say so in the state, log it once
            log.exception("output %s (%s) failed", self.id, self.type)
            self.state, self.error = "failed", f"the output stopped: {exc}"
        if self.state not in ("failed",):
            self.state = "stopped"

    def work(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "output_id": self.id,
            "type": self.type,
            "session_id": self.session_id,
            "state": self.state,
            "error": self.error,
            "slots_dropped": self.slots_dropped,
            "cpu_s": round(self.cpu_s, 3),
        }
