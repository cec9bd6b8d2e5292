"""`avatar serve --engine liveavatar --tiny` end to end: a loopback aiortc peer gets the engine's frames.

The server runs as a subprocess through the real CLI (so the engine options are passed the way a
user passes them); the tiny random models run on the CPU, slower than real time on a shared
machine, so the checks are about the path (frames of the engine's size arrive, generated blocks
reach the track), not about speed.
"""

from __future__ import annotations

import os

import aiohttp
import numpy as np
import pytest

from tests.support.loopback_peer import LoopbackPeer
from tests.support.server_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

TINY_SIZE = (64, 128)  # (width, height) of the tiny engine's frames


@pytest.fixture()
def tiny_server(tmp_path):
    server = ServerProcess(
        ["--engine", "liveavatar", "--tiny", "--device", "cpu"],
        tmp_path / "server.log",
        start_timeout_s=240.0,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    with server:
        yield server.url


async def test_tiny_liveavatar_server_streams_generated_frames(tiny_server, speech_with_silence_wav):
    url = tiny_server
    peer = LoopbackPeer.from_wav(speech_with_silence_wav)
    try:
        session_id = await peer.connect_offer(url)
        await peer.wait_sent(extra_s=2.0, timeout=180.0)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/sessions/{session_id}/stats") as resp:
                assert resp.status == 200
                stats = await resp.json()
    finally:
        await peer.close()

    frames = [f for f in peer.video_frames if f.image is not None]
    assert len(frames) >= 25, f"only {len(frames)} video frames arrived ({stats})"
    width, height = TINY_SIZE
    assert frames[-1].image.shape[:2] == (height, width)
    # generated blocks reached the track: the pictures change over the session (the tiny models' output
    # differs from block to block), and the session counts generated frames
    distinct = {hash(f.image.tobytes()) for f in frames}
    assert len(distinct) >= 12, f"{len(distinct)} distinct frames of {len(frames)} ({stats})"
    pts = np.array([f.pts for f in frames])
    assert np.all(np.diff(pts) > 0)
    assert stats["frames_sent"] >= 25
    assert stats["stream"]["error"] is None
    assert stats["stream"]["frames_generated"] >= 2 * 12  # at least two engine blocks of 12 frames
