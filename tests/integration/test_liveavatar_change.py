"""PATCH /sessions/{id} on a session of the liveavatar engine (tiny random weights, CPU, in
process): the change is taken at the next clip boundary and the stats say when it is live."""

from __future__ import annotations

import asyncio
import time

import pytest

from live_avatar.core.engines import load_engine
from live_avatar.server.config import ServerConfig
from tests.support.inprocess import serve_in_process
from tests.support.live_checks import request
from tests.support.speech_socket import SpeechSocket

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]


async def test_prompt_change_is_live_after_the_next_clip_boundary() -> None:
    engine = load_engine("liveavatar", tiny=True, capacity=1, device="cpu")
    async with serve_in_process(ServerConfig(port=0), engine=engine) as server:
        created = await request(server.url, "POST", "/sessions", json={"prompt": "a host talks"})
        assert created.status == 201, created.body
        sid = created.body["session_id"]
        socket = await SpeechSocket.connect(server.url, sid)
        try:
            deadline = time.monotonic() + 60
            while (await request(server.url, "GET", f"/sessions/{sid}/stats")).body["stream"]["blocks"] < 1:
                assert time.monotonic() < deadline, "the session generated no block"
                await asyncio.sleep(0.1)  # started: the change has to wait for the clip boundary
            answer = await request(server.url, "PATCH", f"/sessions/{sid}", json={"prompt": "a host smiles"})
            assert answer.status == 202, answer.body
            stats = (await request(server.url, "GET", f"/sessions/{sid}/stats")).body
            assert stats["avatar"]["prompt"] == "a host talks"
            assert stats["avatar"]["pending"] == {"avatar_id": "default", "prompt": "a host smiles"}
            updated = await socket.wait_for("updated", timeout=90)
            stats = (await request(server.url, "GET", f"/sessions/{sid}/stats")).body
        finally:
            await socket.close()
        assert updated.body == {"type": "updated", "avatar_id": "default", "prompt": "a host smiles"}
        assert stats["avatar"]["prompt"] == "a host smiles" and stats["avatar"]["pending"] is None
        assert stats["stream"]["error"] is None and stats["state"] == "live"
        generator = server.state["sessions"].get(sid).stream.generator
        assert generator._prompt == "a host smiles" and generator._pending_change is None
        assert generator.stepper.block_index >= 4  # the change waited for clip 1 (4 blocks a clip)
