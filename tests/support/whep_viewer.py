"""A WHEP viewer for tests and benchmarks: an aiortc peer that only receives (POST
/sessions/{id}/whep with a recvonly video + audio offer), recording what it gets like a ``LoopbackPeer``."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiortc import RTCSessionDescription

from live_avatar.server.webrtc.aiortc_hooks import pinned_host_addresses
from tests.support.loopback_peer import LoopbackPeer


@dataclass
class WhepViewerPeer(LoopbackPeer):
    samples_48k: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # sends nothing

    async def _local_offer(self) -> RTCSessionDescription:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        with pinned_host_addresses(self.host_addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription

    async def watch(self, base_url: str, session_id: str) -> str:
        """POST the offer to the session's WHEP endpoint; returns the viewer's Location."""
        self.base_url, self.session_id = base_url.rstrip("/"), session_id
        offer = await self._local_offer()
        async with aiohttp.ClientSession() as http, http.post(
            f"{self.base_url}/sessions/{session_id}/whep", data=offer.sdp,
            headers={**self.http_headers, "Content-Type": "application/sdp"},
        ) as resp:
            text = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"WHEP answered {resp.status}: {text}")
            self.location = resp.headers["Location"]
        await self._apply_answer(text)
        return self.location

    def frame_times(self) -> np.ndarray:
        return np.array([f.arrival for f in self.video_frames])
