"""Run an analysis on the measuring process's data without slowing that process down.

``avatar bench e2e`` analyses what its peer has received every minute while the peer keeps receiving.
In a thread of the peer's process that analysis (minutes of frames, tens of thousands of Python
objects) competes for the GIL for about a second, and the peer's event loop, which reads the RTP
packets and paces the microphone, has to win it back after every socket call. Measured in a 10-minute
GPU run (bench/results/e2e_liveavatar_h100_256x384_600s_peer_analysis.json): the peer's loop fell
50-135 ms behind at the analysis's minute marks, every viewer stall came there (the longest 2.65 s,
after a 527 ms gap on the wire), and the server never paused.

A forked child sees the parent's memory as it was at the fork, copy-on-write: no copy, no pickling
of the inputs, and a GIL of its own. Only the (small) result comes back, pickled, through a pipe.
The child runs nothing but ``fn`` (numpy and plain Python: no locks another thread of the parent could
hold, no event loop, no logging) and leaves with ``os._exit``, so forking a process that has threads
(aiortc's codecs, asyncio's executor) is safe for this use. Where ``os.fork`` does not exist the
analysis runs in a thread, as before.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import warnings
from typing import Any, Callable


def _read_all(fd: int) -> bytes:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # already reaped by the wait that the cancellation interrupted
        pass


def _child(fn: Callable[..., Any], args: tuple, write_fd: int) -> None:
    """In the child: run ``fn``, send ``(ok, value or error text)``, exit without any cleanup."""
    code = 0
    try:
        gc.disable()  # a collection would touch every object and copy the parent's pages for nothing
        try:
            payload = pickle.dumps((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
            payload = pickle.dumps((False, f"{type(exc).__name__}: {exc}"))
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(payload)
    except BaseException:  # noqa: BLE001 - nothing may escape into the parent's code in the child
        code = 1
    finally:
        os._exit(code)


async def run_forked(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a forked child (see the module docstring); its exception, or a failed fork, is
    raised here as a RuntimeError. Cancelling the await kills the child."""
    if not hasattr(os, "fork"):
        return await asyncio.to_thread(fn, *args)
    read_fd, write_fd = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12 warns on fork in a process with threads; the child runs only fn (see above)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as exc:  # no memory or process slot for a child: the caller goes on without the result
        os.close(read_fd)
        os.close(write_fd)
        raise RuntimeError(f"could not fork the analysis: {exc}") from exc
    if pid == 0:
        os.close(read_fd)
        _child(fn, args, write_fd)
    os.close(write_fd)
    reaped = False
    try:
        data = await asyncio.to_thread(_read_all, read_fd)  # blocking reads release the GIL
        await asyncio.to_thread(os.waitpid, pid, 0)
        reaped = True
    finally:
        if not reaped:  # cancelled: the child's end of the pipe closes with it, which ends the read
            os.kill(pid, signal.SIGKILL)
            await asyncio.shield(asyncio.to_thread(_reap, pid))
    if not data:
        raise RuntimeError("the forked analysis exited without a result")
    ok, value = pickle.loads(data)
    if not ok:
        raise RuntimeError(value)
    return value
