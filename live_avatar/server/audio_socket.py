"""``GET /sessions/{id}/audio``: the WebSocket through which a TTS or an agent speaks.

Client -> server: a text message ``{"type": "start", "sample_rate": 16000|24000|48000, "format":
"s16le"}``, then binary messages of mono PCM (any length); text messages ``{"type":
"end_of_speech"}``, ``{"type": "interrupt"}`` and ``{"type": "update", "avatar_id"?, "prompt"?}``.
Server -> client, JSON text: ``speaking_started``, ``playback_position``, ``speaking_finished``
(server/speech_input.py), ``updated`` (a change is live), ``error`` ``{"type": "error", "error":
...}``. A bad message gets an error event and is not used; the socket and the session go on.

Events leave through one writer task and a bounded queue: the event loop never waits on a slow
client, and a client that stops reading for long is disconnected (its session keeps running).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from live_avatar.server.avatar_changes import AvatarChanges, ChangeRefused
from live_avatar.server.config import AudioSocketConfig
from live_avatar.server.speech_input import SpeechInput, SpeechInputError

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 1000  # ~4 minutes of playback positions: a client this far behind is not reading
MAX_TEXT_CHARS = 8192


class AudioSocket:
    """One connected socket: reads producer messages, writes events."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        speech: SpeechInput,
        change: Callable[[dict], Awaitable[None]],
    ) -> None:
        self.ws = ws
        self.speech = speech
        self._change = change  # applies an update message; raises ChangeRefused
        self._events: asyncio.Queue[dict | None] = asyncio.Queue(maxsize=MAX_QUEUED_EVENTS)
        self._overflowed = False
        self._ending = False

    def send(self, event: dict) -> None:
        if self._overflowed:
            return
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self._overflowed = True
            log.warning("audio socket: the client does not read its events; closing it")
            asyncio.ensure_future(self.ws.close(code=1008, message=b"events not read"))

    def error(self, message: str) -> None:
        self.send({"type": "error", "error": message})

    def hang_up(self) -> None:
        """The session ended: the writer sends what is queued, then closes the socket."""
        self._ending = True
        self._events.put_nowait(None) if not self._events.full() else asyncio.ensure_future(self.ws.close())

    async def _write(self) -> None:
        while (event := await self._events.get()) is not None:
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(json.dumps(event))
            except (ConnectionError, RuntimeError):
                return
        if self._ending:
            await self.ws.close(code=1001, message=b"session ended")

    async def run(self) -> None:
        writer = asyncio.create_task(self._write(), name="audio-socket-writer")
        changes = AvatarChanges.of(self.speech.session)
        changes.listeners.append(self.send)
        try:
            async for message in self.ws:
                if message.type == WSMsgType.BINARY:
                    self._on_binary(message.data)
                elif message.type == WSMsgType.TEXT:
                    await self._on_text(message.data)
                elif message.type == WSMsgType.ERROR:
                    log.info("audio socket error: %s", self.ws.exception())
                    break
                if self.speech.session.closed:
                    break
        finally:
            self.speech.detach()
            if self.send in changes.listeners:
                changes.listeners.remove(self.send)
            self._events.put_nowait(None) if not self._events.full() else None
            try:
                await asyncio.wait_for(writer, 2.0)  # the last events (e.g. "the session ended")
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()
            await self.ws.close()

    def _on_binary(self, data: bytes) -> None:
        try:
            self.speech.push_pcm(data)
        except SpeechInputError as exc:
            self.error(str(exc))

    async def _on_text(self, text: str) -> None:
        if len(text) > MAX_TEXT_CHARS:
            self.error(f"a text message may have at most {MAX_TEXT_CHARS} characters")
            return
        try:
            message = json.loads(text)
        except ValueError:
            self.error('text messages must be JSON objects, e.g. {"type": "end_of_speech"}; send audio as binary messages')
            return
        kind = message.get("type") if isinstance(message, dict) else None
        try:
            if kind == "start":
                self.speech.start(message)
            elif kind == "end_of_speech":
                self.speech.end_of_speech()
            elif kind == "interrupt":
                self.speech.interrupt()
            elif kind == "update":
                await self._change(message)
            else:
                self.error(f"unknown message type {kind!r}: expected start, end_of_speech, interrupt or update")
        except (SpeechInputError, ChangeRefused) as exc:
            self.error(str(exc))


async def serve_audio_socket(
    request: web.Request, session: Any, config: AudioSocketConfig, change: Callable[[dict], Awaitable[None]]
) -> web.StreamResponse:
    """The handler's body once the session is known; refusals are 4xx JSON before the upgrade."""
    speech: SpeechInput | None = session.speech
    if speech is None:
        return web.json_response(
            {"error": f"session {session.id} takes its audio from its WebRTC peer's microphone; open a session with "
                      "POST /sessions, or POST /offer with \"audio_source\": \"websocket\", to push speech"},
            status=409,
        )
    if speech.attached:
        return web.json_response({"error": f"an audio WebSocket is already connected to session {session.id}"}, status=409)
    ws = web.WebSocketResponse(heartbeat=config.heartbeat_s, max_msg_size=config.max_message_bytes)
    if not ws.can_prepare(request).ok:
        return web.json_response({"error": "this is a WebSocket endpoint: connect with Upgrade: websocket"}, status=426,
                                 headers={"Upgrade": "websocket"})
    socket = AudioSocket(ws, speech, change)
    speech.attach(socket.send, socket.hang_up)  # before any await: a second socket racing this one is refused
    try:
        await ws.prepare(request)
    except BaseException:
        speech.detach()
        raise
    await socket.run()
    return ws


__all__ = ["AudioSocket", "serve_audio_socket"]
