"""Speech fed to a server session as a WebRTC peer would: 20 ms packets at their real times."""

from __future__ import annotations

import asyncio
import time

import numpy as np

SR, PACKET = 16000, 320  # 20 ms, as a WebRTC peer sends them


async def feed_in_real_time(session, program: np.ndarray, t0: float, tail_s: float = 0.3) -> None:
    """Push ``program`` (16 kHz mono) into ``session.push_audio`` packet by packet, each when its last
    sample would have arrived after ``t0``; then wait ``tail_s`` for the last frames to go out."""
    for i in range(0, program.size, PACKET):
        await asyncio.sleep(max(0.0, t0 + (i + PACKET) / SR - time.monotonic()))
        session.push_audio(program[i : i + PACKET], t_arrival=time.monotonic())
    await asyncio.sleep(tail_s)
