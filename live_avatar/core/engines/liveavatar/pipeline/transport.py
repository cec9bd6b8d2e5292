"""Messages between pipeline ranks over torch.distributed point-to-point.

A message is any picklable object (dicts of CPU tensors, ints, numpy arrays); it travels as an int64 length
(tag 0) then its bytes (tag 1). Every rank runs one receiver thread that is always posted on an any-source
receive and queues what arrives, so a blocking send always finds its peer ready (no send/send cycles can
deadlock) and the rank's main thread waits on a queue with its own deadline. gloo cannot do that itself: a
timed-out gloo receive is broken for good, and a pending receive does not progress unless waited on.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

HEADER_TAG, BODY_TAG = 0, 1


class PipelineError(RuntimeError):
    """A rank died, hung past its deadline, or failed (user-facing message)."""


@dataclass
class Message:
    src: int
    body: Any
    received_at: float  # time.perf_counter() on arrival (transfer timing)
    nbytes: int


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class Channel:
    """This rank's sending side and its receiver thread. ``alive()`` returns None or a sentence saying which
    peer is gone; waits give up with :class:`PipelineError` when it says so or a deadline passes."""

    def __init__(self, rank: int, alive: Callable[[], str | None] = lambda: None) -> None:
        self.rank = rank
        self.alive = alive
        self.inbox: queue.Queue[Message | BaseException] = queue.Queue()
        self._held: list[Message] = []  # received but not yet asked for
        self._cond = threading.Condition()
        self.unwanted: Callable[[Message], bool] = lambda m: False  # dropped on arrival (closed sessions')
        self._pumping = False
        self._send_lock = threading.Lock()
        self.bytes_sent = 0
        self.send_s = 0.0
        self._thread = threading.Thread(target=self._receive_forever, name=f"pipeline-recv-{rank}", daemon=True)
        self._thread.start()

    def send(self, dst: int, body: Any) -> float:
        """Blocking send (the peer's receiver thread is always ready); returns the seconds it took."""
        data = pickle.dumps(_to_cpu(body), protocol=pickle.HIGHEST_PROTOCOL)
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        header = torch.tensor([payload.numel()], dtype=torch.int64)
        t0 = time.perf_counter()
        with self._send_lock:
            try:
                dist.send(header, dst, tag=HEADER_TAG)
                dist.send(payload, dst, tag=BODY_TAG)
            except RuntimeError as exc:
                raise PipelineError(f"rank {self.rank} could not send to rank {dst}: {self._why_gone(exc)}") from None
        took = time.perf_counter() - t0
        self.bytes_sent += payload.numel()
        self.send_s += took
        return took

    def _why_gone(self, error: BaseException) -> str:
        """Which peer is gone, once the watcher sees it (a dead peer's socket usually fails first)."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            gone = self.alive()
            if gone:
                return gone
            time.sleep(0.05)
        return f"connection lost ({str(error).split(' This is typically')[0]})"

    def _receive_forever(self) -> None:
        try:
            while True:
                header = torch.zeros(1, dtype=torch.int64)
                src = dist.recv(header, src=None, tag=HEADER_TAG)
                payload = torch.empty(int(header.item()), dtype=torch.uint8)
                dist.recv(payload, src=src, tag=BODY_TAG)
                body = pickle.loads(payload.numpy().tobytes())
                self.inbox.put(Message(src, body, time.perf_counter(), payload.numel()))
        except BaseException as exc:  # noqa: BLE001 - the group went away (a peer died, or shutdown): waits raise it
            self.inbox.put(exc)

    def wait_for(self, match: Callable[[Message], bool], timeout_s: float | None, what: str) -> Message:
        """The first message (kept ones first, in arrival order) that ``match``es; others are kept for the
        thread that asks for them (several sessions' threads may wait at once)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                for index, message in enumerate(self._held):
                    if match(message):
                        return self._held.pop(index)
                if self._pumping:  # another thread reads the inbox; it wakes us for every message
                    self._cond.wait(0.1)
                else:
                    self._pumping = True
                    self._cond.release()
                    try:
                        item = self.inbox.get(timeout=0.1)
                    except queue.Empty:
                        item = None
                    finally:
                        self._cond.acquire()
                        self._pumping = False
                    if isinstance(item, BaseException):
                        self.inbox.put(item)  # every later wait fails the same way
                        raise PipelineError(f"rank {self.rank} lost its connection while waiting for {what}: "
                                            f"{self._why_gone(item)}") from None
                    if item is not None and not self.unwanted(item):
                        self._held.append(item)
                    self._cond.notify_all()
                    if item is not None:
                        continue
                gone = self.alive()
                if gone:
                    raise PipelineError(f"rank {self.rank} stopped waiting for {what}: {gone}") from None
                if deadline is not None and time.monotonic() > deadline:
                    raise PipelineError(f"rank {self.rank} waited {timeout_s:.0f} s for {what}: a rank is stuck") from None

    def discard(self, match: Callable[[Message], bool]) -> int:
        """Drop kept messages nobody will ask for (a closed session's late frames); returns how many."""
        with self._cond:
            before = len(self._held)
            self._held = [m for m in self._held if not match(m)]
            return before - len(self._held)

    def keep(self, src: int, body: Any) -> None:
        """A message from this rank to itself (it goes where received ones go)."""
        with self._cond:
            self._held.append(Message(src, body, time.perf_counter(), 0))
            self._cond.notify_all()
