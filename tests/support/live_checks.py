"""For tests that send requests at a server while a session streams: JSON requests (status, body,
headers), a throwaway offer SDP, an upload form, a portrait with a face, and the checks that a live
session started and kept streaming."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from aiortc import RTCPeerConnection
from multidict import CIMultiDictProxy

from tests.support.loopback_peer import LoopbackPeer


def lite_engine_of_capacity(capacity: int = 4):
    """The lite engine with a fixed capacity (not a CPU measurement), so that the server's own
    limits are the ones under test."""
    from live_avatar.core.engines import load_engine

    engine = load_engine("lite")
    engine.capacity = capacity
    return engine


@dataclass
class Answer:
    status: int
    body: Any  # parsed JSON, or the text when the answer is not JSON
    headers: CIMultiDictProxy[str]

    @property
    def error(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None


async def request(base_url: str, method: str, path: str, *, http: aiohttp.ClientSession | None = None, **kwargs) -> Answer:
    """One request; ``http`` (a session with its cookie jar) makes several one browser's."""
    if http is None:
        async with aiohttp.ClientSession() as fresh:
            return await request(base_url, method, path, http=fresh, **kwargs)
    async with http.request(method, f"{base_url}{path}", **kwargs) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return Answer(resp.status, body, resp.headers)


def browser_session() -> aiohttp.ClientSession:
    """A client that keeps the server's cookies, like one browser (also for an IP-address host)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def assert_json_error(answer: Answer, status: int, *words: str) -> None:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.headers
    assert isinstance(answer.error, str) and answer.error, answer.body
    for word in words:
        assert word.lower() in answer.error.lower(), (word, answer.error)


async def offer_sdp(audio: bool = True, video: bool = True) -> str:
    """A valid offer from a peer that is closed at once: its session never connects."""
    pc = RTCPeerConnection()
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    if video:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def upload_form(data: bytes, filename: str = "portrait.png", content_type: str = "image/png") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=filename, content_type=content_type)
    return form


def portrait_jpeg() -> bytes:
    """The built-in portrait as a JPEG upload (a face the engine finds)."""
    import cv2

    from live_avatar.core.portraits import default_portrait

    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(default_portrait(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return jpeg.tobytes()


async def start_streaming(base_url: str, wav, avatar_id: str | None = None, **peer_options) -> LoopbackPeer:
    """A LoopbackPeer connected through POST /offer that has received its first video frames."""
    peer = LoopbackPeer.from_wav(wav, frame_format=None, **peer_options)
    try:
        await peer.connect_offer(base_url, avatar_id=avatar_id)
        await wait_until_streaming(peer)
    except BaseException:
        await peer.close()
        raise
    return peer


async def wait_until_streaming(peer: LoopbackPeer, frames: int = 10, timeout_s: float = 20.0) -> None:
    """The peer (a LoopbackPeer or a WHEP viewer) is connected and has received ``frames`` video frames."""
    await asyncio.wait_for(peer.connected.wait(), timeout_s)
    deadline = time.monotonic() + timeout_s
    while len(peer.video_frames) < frames and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(peer.video_frames) >= frames, "the live session never started streaming"


async def assert_kept_streaming(peer: LoopbackPeer, window_s: float = 1.0) -> None:
    """Still about 25 fps now, and no stall of a second or more since it started."""
    before = len(peer.video_frames)
    await asyncio.sleep(window_s)
    assert len(peer.video_frames) - before >= 15 * window_s, "the live session no longer streams at ~25 fps"
    arrivals = np.array([f.arrival for f in peer.video_frames])
    assert np.diff(arrivals).max() < 1.0, "the live session stalled for a second or more"
