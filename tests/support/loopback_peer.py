"""An in-process WebRTC client for tests and benchmarks: it talks to the server like a browser.

It sends a WAV file (any rate; resampled to 48 kHz mono) as its microphone, paced in real time
(one 20 ms frame every 20 ms from one start time, silence after the file ends, as a live mic
would), and records what comes back: every video frame with its arrival time and RTP pts, and the
received audio.

    peer = LoopbackPeer.from_wav("speech.wav")
    session_id = await peer.connect_offer("http://127.0.0.1:8080")   # or connect_whip(...)
    await peer.wait_sent(extra_s=1.0)   # the whole file plus 1 s
    video, audio = peer.video_frames, peer.audio_samples()
    await peer.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from live_avatar.server.webrtc.aiortc_hooks import (
    pinned_host_addresses,
    set_audio_jitter_prefetch,
)

log = logging.getLogger(__name__)

RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms


def load_audio_48k(path: str | Path) -> np.ndarray:
    """Any audio file -> 48 kHz mono float32 (PyAV)."""
    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        for frame in container.decode(audio=0):
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


class WavMicrophoneTrack(MediaStreamTrack):
    """Plays samples as a live microphone: frame i is due at start + i * 20 ms, then silence."""

    kind = "audio"

    def __init__(self, samples_48k: np.ndarray) -> None:
        super().__init__()
        self._samples = np.asarray(samples_48k, np.float32)
        self._index = 0
        self.started_at: float | None = None  # monotonic time frame 0 was handed to the sender
        self.duration_s = self._samples.size / RATE
        self.paused = False  # True: stop sending (a muted or frozen client)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started_at is None:
            self.started_at = time.monotonic()
        due = self.started_at + self._index * FRAME_SAMPLES / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        while self.paused:
            await asyncio.sleep(0.05)
            if self.readyState != "live":
                raise MediaStreamError
        start = self._index * FRAME_SAMPLES
        chunk = self._samples[start : start + FRAME_SAMPLES]
        if chunk.size < FRAME_SAMPLES:
            chunk = np.concatenate([chunk, np.zeros(FRAME_SAMPLES - chunk.size, np.float32)])
        pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._index * FRAME_SAMPLES
        frame.time_base = Fraction(1, RATE)
        self._index += 1
        return frame


@dataclass
class ReceivedVideoFrame:
    arrival: float  # time.monotonic() when the decoded frame reached us
    pts: int  # RTP-derived pts (90 kHz)
    image: np.ndarray | None  # uint8 [H, W] luma or [H, W, 3] RGB (see frame_format), None if not kept


@dataclass
class ReceivedAudio:
    arrival: float
    pts: int | None
    samples: np.ndarray  # mono float32 at 48 kHz


@dataclass
class LoopbackPeer:
    samples_48k: np.ndarray
    host_addresses: list[str] | None = field(default_factory=lambda: ["127.0.0.1"])
    # What to keep of each received video frame: "gray" (the luma plane: cheap, enough to see
    # the mouth move), "rgb24", or None (arrival times and pts only: benchmarks).
    frame_format: str | None = "gray"
    max_images: int = 25 * 120  # frames whose image is kept (the first ones: the test window)
    max_frames: int = 25 * 3600  # video frames / audio frames whose times are kept (an hour)
    # "sendrecv": one audio m-line both ways (aiortc/OBS style); "browser": the browser client's
    # layout, a sendonly mic m-line plus recvonly video and recvonly audio m-lines.
    layout: str = "sendrecv"
    # packets aiortc's audio jitter buffer holds back on the receive side (aiortc: 4, server: 1);
    # None keeps aiortc's default
    audio_jitter_prefetch: int | None = 1
    # sent with every HTTP request (offer, WHIP, DELETE): e.g. Authorization, Cookie
    http_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mic = WavMicrophoneTrack(self.samples_48k)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video_frames: list[ReceivedVideoFrame] = []
        self.audio_frames: list[ReceivedAudio] = []
        self.session_id: str | None = None
        self.offer_answer: dict = {}
        self.location: str | None = None
        self.base_url: str | None = None
        self._tasks: list[asyncio.Task] = []
        self.connected = asyncio.Event()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    @classmethod
    def from_wav(cls, path: str | Path, **kwargs) -> "LoopbackPeer":
        return cls(load_audio_48k(path), **kwargs)

    # -- signaling -----------------------------------------------------------------------------
    async def _local_offer(self) -> RTCSessionDescription:
        if self.layout == "browser":
            self.pc.addTransceiver(self.mic, direction="sendonly")
            self.pc.addTransceiver("video", direction="recvonly")
            self.pc.addTransceiver("audio", direction="recvonly")
        elif self.layout == "sendrecv":
            self.pc.addTransceiver(self.mic, direction="sendrecv")  # mic out, avatar speech back
            self.pc.addTransceiver("video", direction="recvonly")
        else:
            raise ValueError(f"unknown layout {self.layout!r}; use 'sendrecv' or 'browser'")
        with pinned_host_addresses(self.host_addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription

    async def connect_offer(
        self, base_url: str, avatar_id: str | None = None, prompt: str | None = None, options: dict | None = None
    ) -> str:
        """POST /offer (``options``: more fields of its JSON, e.g. audio_source); returns the session
        id, keeps the whole answer in ``offer_answer``. Raises RuntimeError with the server's error."""
        self.base_url = base_url.rstrip("/")
        offer = await self._local_offer()
        body = {"sdp": offer.sdp, "type": offer.type, **(options or {})}
        if avatar_id:
            body["avatar_id"] = avatar_id
        if prompt:
            body["prompt"] = prompt
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base_url}/offer", json=body, headers=self.http_headers) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"/offer answered {resp.status}: {data.get('error')}")
        self.session_id = data["session_id"]
        self.offer_answer = data
        await self._apply_answer(data["sdp"])
        return self.session_id

    async def connect_whip(self, base_url: str, avatar_id: str | None = None) -> str:
        """POST /whip (RFC 9725); returns the session id (last part of Location)."""
        self.base_url = base_url.rstrip("/")
        offer = await self._local_offer()
        params = {"avatar_id": avatar_id} if avatar_id else None
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.base_url}/whip", data=offer.sdp, params=params, headers={**self.http_headers, "Content-Type": "application/sdp"}
            ) as resp:
                text = await resp.text()
                if resp.status != 201:
                    raise RuntimeError(f"/whip answered {resp.status}: {text}")
                self.location = resp.headers["Location"]
                assert resp.content_type == "application/sdp", resp.content_type
        self.session_id = self.location.rstrip("/").rsplit("/", 1)[-1]
        await self._apply_answer(text)
        return self.session_id

    async def _apply_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        if self.audio_jitter_prefetch is not None:
            set_audio_jitter_prefetch(self.pc, self.audio_jitter_prefetch)

    # -- media ---------------------------------------------------------------------------------
    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        reader = self._read_video(track) if track.kind == "video" else self._read_audio(track)
        self._tasks.append(asyncio.ensure_future(reader))

    async def _read_video(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                arrival = time.monotonic()
                image = None
                if self.frame_format and len(self.video_frames) < self.max_images:
                    image = frame.to_ndarray(format=self.frame_format)
                if len(self.video_frames) < self.max_frames:
                    self.video_frames.append(ReceivedVideoFrame(arrival, frame.pts, image))
        except MediaStreamError:
            pass
        except Exception:
            log.exception("loopback peer: video receive failed")

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        try:
            while True:
                frame = await track.recv()
                arrival = time.monotonic()
                if len(self.audio_frames) >= 2 * self.max_frames:
                    continue  # bounded: the first hour is kept
                for out in resampler.resample(frame):
                    self.audio_frames.append(ReceivedAudio(arrival, frame.pts, out.to_ndarray().reshape(-1)))
        except MediaStreamError:
            pass
        except Exception:
            log.exception("loopback peer: audio receive failed")

    def audio_samples(self) -> np.ndarray:
        """All received audio, 48 kHz mono float32, in arrival order."""
        if not self.audio_frames:
            return np.zeros(0, np.float32)
        return np.concatenate([a.samples for a in self.audio_frames])

    async def wait_sent(self, extra_s: float = 0.0, timeout: float = 120.0) -> None:
        """Wait until the whole file has been sent (plus ``extra_s``)."""
        await asyncio.wait_for(self.connected.wait(), timeout)
        deadline = time.monotonic() + timeout
        while self.mic.started_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.mic.started_at is None:
            raise TimeoutError("the microphone track never started sending")
        end = self.mic.started_at + self.mic.duration_s + extra_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))

    async def vanish(self) -> None:
        """Disappear without a goodbye (a crashed browser, a pulled cable): stop sending media and
        stop answering ICE consent checks, with no DTLS close or RTCP BYE."""
        self.mic.paused = True
        for transceiver in self.pc.getTransceivers():
            ice = transceiver.sender.transport.transport
            for protocol in list(getattr(ice._connection, "_protocols", [])):  # test tool: reach in
                if protocol.transport is not None:
                    protocol.transport.close()

    async def delete_session(self) -> int:
        """DELETE the session on the server (WHIP: the Location URL); returns the HTTP status."""
        url = f"{self.base_url}{self.location}" if self.location else f"{self.base_url}/sessions/{self.session_id}"
        async with aiohttp.ClientSession() as http:
            async with http.delete(url, headers=self.http_headers) as resp:
                return resp.status

    async def close(self) -> None:
        self.mic.stop()
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
