"""A TTS-like client of ``GET /sessions/{id}/audio`` for tests and benchmarks: it pushes PCM (as fast
as asked, e.g. 3x real time) and records every server event with its arrival time."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np


@dataclass
class Event:
    arrival: float  # time.monotonic() when it reached the client
    body: dict

    @property
    def type(self) -> str:
        return self.body.get("type", "")


@dataclass
class SpeechSocket:
    ws: aiohttp.ClientWebSocketResponse
    http: aiohttp.ClientSession
    events: list[Event] = field(default_factory=list)
    _reader: asyncio.Task | None = None
    _new_event: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def connect(cls, base_url: str, session_id: str, **kwargs) -> SpeechSocket:
        http = aiohttp.ClientSession()
        try:
            ws = await http.ws_connect(f"{base_url}/sessions/{session_id}/audio", **kwargs)
        except BaseException:
            await http.close()
            raise
        socket = cls(ws, http)
        socket._reader = asyncio.create_task(socket._read())
        return socket

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.events.append(Event(time.monotonic(), json.loads(message.data)))
                self._new_event.set()

    async def send(self, message: dict) -> float:
        await self.ws.send_str(json.dumps(message))
        return time.monotonic()

    async def start(self, sample_rate: int) -> None:
        await self.send({"type": "start", "sample_rate": sample_rate, "format": "s16le"})

    async def push(self, samples: np.ndarray, sample_rate: int, speed: float = 3.0, chunk_s: float = 0.02) -> float:
        """Send float samples as s16le in ``chunk_s`` pieces, ``speed`` times faster than real time;
        returns when the first piece was sent."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
        step = int(sample_rate * chunk_s)
        started = time.monotonic()
        for i, start in enumerate(range(0, pcm.size, step)):
            await self.ws.send_bytes(pcm[start : start + step].tobytes())
            delay = started + (i + 1) * chunk_s / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return started

    async def wait_for(self, kind: str, after: int = 0, timeout: float = 20.0) -> Event:
        """The first event of type ``kind`` at index >= ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[after:]:
                if event.type == kind:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind!r} event within {timeout} s; got {[e.body for e in self.events[after:]]}")
            self._new_event.clear()
            try:
                await asyncio.wait_for(self._new_event.wait(), remaining)
            except TimeoutError:
                pass

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        await self.http.close()
