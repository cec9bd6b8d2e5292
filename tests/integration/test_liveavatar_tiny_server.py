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


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    server = ServerProcess(
        # compiled with dynamo's eager backend (graphs traced and counted, no code generation): the server
        # warms up before it says ready, and no session compiles anything after that
        # reuse_sessions (on by default with CUDA graphs): each session takes the previous one's stepper
        ["--engine", "liveavatar", "--tiny", "--device", "cpu",
         "--engine-option", "compile=true", "--engine-option", "compile_backend=eager",
         "--engine-option", "reuse_sessions=true"],
        tmp_path_factory.mktemp("tiny-server") / "server.log",
        start_timeout_s=240.0,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    with server:
        yield server


async def test_tiny_liveavatar_server_warms_up_before_ready_and_sessions_compile_nothing(tiny_server, speech_with_silence_wav):
    log = tiny_server.log_path.read_text()
    assert "liveavatar warm-up at 64x128" in log and "graphs compiled" in log, log[-2000:]
    assert log.index("graphs compiled") < log.index("ready on"), "the warm-up ends before the server says ready"
    peer = LoopbackPeer.from_wav(speech_with_silence_wav)
    try:
        session_id = await peer.connect_offer(tiny_server.url)
        await peer.wait_sent(extra_s=1.0, timeout=180.0)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{tiny_server.url}/sessions/{session_id}/stats") as resp:
                stats = (await resp.json())["stream"]
        await peer.delete_session()  # the engine holds one session; the next test opens its own
    finally:
        await peer.close()
    assert stats["blocks"] >= 5, stats  # past the clip boundary (4 blocks a clip): the sink refresh ran too
    assert stats["engine"]["compiles_since_ready"] == 0, stats["engine"]
    assert stats["compute_budget_ms"] == pytest.approx(480.0)
    assert stats["compute_margin_pct"] is not None
    last = stats["engine"]["last_block_ms"]
    assert set(last) == {"audio", "sink_refresh", "dit", "vae", "total", "vae_parts"}
    # the block went out a latent frame (4 frames) at a time, each part on the host within the VAE stage
    assert len(last["vae_parts"]) == 3 and last["vae_parts"] == sorted(last["vae_parts"]), last
    assert last["vae_parts"][-1] <= last["vae"] + 0.1, last
    assert stats["first_out_ms_p50"] <= stats["compute_ms_p50"], stats
    first_blocks = stats["engine"]["first_blocks_ms"]
    assert len(first_blocks) == 5 and all(b["total"] > 0 for b in first_blocks)  # the session's start, by stage
    assert stats["engine"]["stepper_reused"] is True  # the warm-up's session left its stepper


async def test_tiny_liveavatar_server_streams_generated_frames(tiny_server, speech_with_silence_wav):
    url = tiny_server.url
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
