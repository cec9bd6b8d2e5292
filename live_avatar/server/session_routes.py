"""Sessions driven by pushed speech, and live changes (DESIGN.md §4):

* ``POST /sessions`` ``{"avatar_id"?, "prompt"?}`` -> 201 ``{"session_id", "audio_ws", "whep",
  "view"}`` (paths): a session with no WebRTC input. It generates from the moment it is made (its
  ``MediaClock`` paces it, consumers or not) and ends ``audio_socket.idle_timeout_s`` after its
  last audio WebSocket closed (or after it was made, if none comes), or on DELETE.
* ``GET /sessions/{id}/audio``: the audio WebSocket (server/audio_socket.py). A WebRTC session
  takes its speech from it instead of its microphone when opened with ``"audio_source":
  "websocket"`` (POST /offer JSON) or ``?audio_source=websocket`` (POST /whip); its offer may then
  be receive-only.
* ``PATCH /sessions/{id}`` ``{"avatar_id"?, "prompt"?}`` -> 202: the change takes effect at the
  next block (server/avatar_changes.py).

Access tokens, the Origin check (WebSocket handshakes included) and the per-client session limit
apply as to every API route: the middlewares in app.py run before these handlers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from live_avatar.server.audio_socket import serve_audio_socket
from live_avatar.server.auth import caller_of
from live_avatar.server.avatar_changes import AvatarChanges, ChangeRefused, parse_change
from live_avatar.server.config import AudioSocketConfig
from live_avatar.server.http_errors import error_response
from live_avatar.server.sessions import CapacityError, ClientLimitError
from live_avatar.server.speech_input import SpeechInput

AUDIO_SOURCES = ("peer", "websocket")
MAX_JSON_BYTES = 16 * 1024


def session_paths(session: Any) -> dict[str, str]:
    """The paths of a session's endpoints (``audio_ws`` only where it takes pushed speech)."""
    paths = {"whep": f"/sessions/{session.id}/whep", "view": f"/sessions/{session.id}/view"}
    if session.audio_source == "websocket":
        paths["audio_ws"] = f"/sessions/{session.id}/audio"
    return paths


def describe_session(session: Any, config: AudioSocketConfig, avatar_id: str | None, prompt: str | None, *,
                     pushed_speech: bool, expire_without_socket: bool = False) -> None:
    """Attach what a new session needs: which avatar/prompt it shows and, for pushed speech, its
    SpeechInput with the stream running from now (idle frames until speech comes)."""
    AvatarChanges(session, avatar_id, prompt)
    if pushed_speech:
        session.speech = SpeechInput(session, config, expire_without_socket=expire_without_socket)
        session.stream.start()
        if session.first_audio_at is None:  # first-frame latency: from the start, there is no first packet
            session.first_audio_at = time.monotonic()


class PushedSpeechRoutes:
    def __init__(self, api: Any) -> None:
        self.api = api  # routes.Api: its sessions, avatars and config are bound at startup

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/sessions", self.create_session)
        r.add_patch("/sessions/{session_id}", self.change_session)
        r.add_get("/sessions/{session_id}/audio", self.audio_socket)

    async def _json_object(self, request: web.Request, shape: str, allow_empty: bool = False) -> dict | web.Response:
        if allow_empty and not request.body_exists:
            return {}
        if request.content_type != "application/json":
            return error_response(415, f"send Content-Type: application/json: {shape}")
        body = await self.api._read_limited(request, MAX_JSON_BYTES)
        if isinstance(body, web.Response):
            return body
        if not body.strip() and allow_empty:
            return {}
        try:
            params = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return error_response(400, f"the request body must be JSON: {shape}")
        if not isinstance(params, dict):
            return error_response(400, f"the request body must be a JSON object: {shape}")
        return params

    async def create_session(self, request: web.Request) -> web.Response:
        shape = '{"avatar_id"?, "prompt"?}'
        params = await self._json_object(request, shape, allow_empty=True)
        if isinstance(params, web.Response):
            return params
        avatar_id, prompt = params.get("avatar_id"), params.get("prompt")
        if avatar_id is not None and not isinstance(avatar_id, str):
            return error_response(400, "avatar_id must be a string")
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > 2000):
            return error_response(400, "prompt must be a string of at most 2000 characters")
        caller = caller_of(request)
        try:
            avatar = self.api.avatars.get(avatar_id, caller.owner)
        except KeyError:
            return error_response(404, f"unknown avatar_id {avatar_id!r}; upload one with POST /avatars")
        config = self.api.config.audio_socket
        try:
            session = await self.api.sessions.create(avatar, prompt or None, caller.client, buffered_speech_s=config.max_buffered_s)
        except CapacityError as exc:
            return web.json_response({"error": str(exc), "reason": "capacity"}, status=503)
        except ClientLimitError as exc:
            return web.json_response({"error": str(exc), "reason": "sessions_per_client"}, status=429)
        session.start()
        describe_session(session, config, avatar_id, prompt, pushed_speech=True, expire_without_socket=True)
        return web.json_response(
            {"session_id": session.id, **session_paths(session)}, status=201, headers={"Location": f"/sessions/{session.id}"}
        )

    async def change_session(self, request: web.Request) -> web.Response:
        session = self.api._session(request)
        params = await self._json_object(request, '{"avatar_id"?, "prompt"?}')
        if isinstance(params, web.Response):
            return params
        try:
            target = await self.apply_change(session, params, caller_of(request).owner)
        except ChangeRefused as exc:
            return error_response(exc.status, str(exc))
        return web.json_response({"session_id": session.id, "pending": target, "takes_effect": "next block"}, status=202)

    async def apply_change(self, session: Any, params: Any, owner: str) -> dict:
        """Check and hand over a change (PATCH or the socket's update message); raises ChangeRefused."""
        change = parse_change(params)
        avatar = None
        if change.avatar_id is not None:
            try:
                avatar = self.api.avatars.get(change.avatar_id, owner)
            except KeyError:
                raise ChangeRefused(f"unknown avatar_id {change.avatar_id!r}; upload one with POST /avatars", status=404) from None
        if session.closed:
            raise ChangeRefused(f"session {session.id} has ended", status=409)
        return AvatarChanges.of(session).request(change, avatar)

    async def audio_socket(self, request: web.Request) -> web.StreamResponse:
        session = self.api._session(request)
        owner = caller_of(request).owner

        async def change(message: dict) -> None:
            await self.apply_change(session, message, owner)

        return await serve_audio_socket(request, session, self.api.config.audio_socket, change)


__all__ = ["AUDIO_SOURCES", "PushedSpeechRoutes", "describe_session", "session_paths"]
