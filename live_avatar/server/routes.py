"""HTTP handlers (DESIGN.md §4). Every client error is a 4xx with JSON ``{"error": ...}``.

Who may call what is decided before a handler runs (server/auth.py, server/origins.py): the routes
registered in ``open_resources`` need no token; every handler can read its ``Caller`` (the client
that per-client limits count, the owner whose uploaded portraits it may use).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from live_avatar.core.contract import AvatarError
from live_avatar.resources import CLIENT_DIR
from live_avatar.server.auth import Caller, caller_of
from live_avatar.server.avatars import AvatarStore, StoreFull
from live_avatar.server.config import ServerConfig
from live_avatar.server.http_errors import describe_multipart_error
from live_avatar.server.metrics import ServerMetrics
from live_avatar.server.outputs.routes import OutputRoutes
from live_avatar.server.rate_limits import SlidingWindowLimit
from live_avatar.server.session_routes import AUDIO_SOURCES, PushedSpeechRoutes, describe_session, session_paths
from live_avatar.server.sessions import CapacityError, ClientLimitError, SessionManager
from live_avatar.server.webrtc.signaling import OfferError, PeerConnector, check_offer

log = logging.getLogger(__name__)

IMAGE_FIELD_NAMES = ("image", "file", "avatar")


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class Api:
    def __init__(
        self,
        config: ServerConfig,
        avatars: AvatarStore,
        sessions: SessionManager,
        connector: PeerConnector,
        metrics: ServerMetrics,
    ) -> None:
        self.config = config
        self.avatars = avatars
        self.sessions = sessions
        self.connector = connector
        self.metrics = metrics
        self.uploads = SlidingWindowLimit(config.limits.uploads_per_minute, window_s=60.0)
        self.open_resources: list[web.AbstractResource] = []  # routes that need no access token

    def register(self, app: web.Application) -> None:
        r = app.router
        self.open_resources.append(r.add_get("/", self.index).resource)
        self.open_resources.append(r.add_get("/healthz", self.healthz).resource)
        metrics = r.add_get("/metrics", self.prometheus).resource
        if self.config.auth.metrics_open:
            self.open_resources.append(metrics)
        r.add_post("/offer", self.offer)
        r.add_post("/whip", self.whip)
        r.add_delete("/whip/{session_id}", self.whip_delete)
        r.add_patch("/whip/{session_id}", self.whip_patch)
        r.add_get("/avatars", self.list_avatars)
        r.add_post("/avatars", self.upload_avatar)
        r.add_post("/sessions/{session_id}/interrupt", self.interrupt)
        r.add_delete("/sessions/{session_id}", self.delete_session)
        r.add_get("/sessions/{session_id}/stats", self.session_stats)
        PushedSpeechRoutes(self).register(app)  # POST /sessions, PATCH /sessions/{id}, GET /sessions/{id}/audio
        self.outputs = OutputRoutes(self)  # WHEP, viewer page, pushes, recordings: server/outputs/
        self.outputs.register(app)
        if CLIENT_DIR.is_dir():
            self.open_resources.append(r.add_static("/static/", CLIENT_DIR, show_index=False))
            # the page links its files relatively (app.js, style.css): serve them at the root too
            for path in CLIENT_DIR.iterdir():
                if path.is_file() and path.name != "index.html":
                    self.open_resources.append(r.add_get(f"/{path.name}", self._file_handler(path)).resource)

    # -- pages and health ----------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        page = CLIENT_DIR / "index.html"
        if not page.is_file():
            return json_error(404, "the browser client (live_avatar/client/index.html) is not installed")
        return web.FileResponse(page)

    @staticmethod
    def _file_handler(path: Path):
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(path)

        return handler

    async def healthz(self, request: web.Request) -> web.Response:
        body = {"status": "ok", "engine": self.config.engine, "sessions": len(self.sessions), "max_sessions": self.sessions.limit,
                "capacity": self.sessions.monitor.stats() if self.sessions.monitor is not None else None}
        pipeline = getattr(self.sessions.engine, "pipeline", None)  # liveavatar --num_gpus_dit N
        if pipeline is not None:
            body["pipeline"] = pipeline.status()
            if body["pipeline"]["failure"]:
                body["status"] = "degraded"
        return web.json_response(body)

    async def prometheus(self, request: web.Request) -> web.Response:
        for session in self.sessions.all():
            session.report_counters()
        return web.Response(body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type})

    # -- signaling -----------------------------------------------------------------------------
    async def _read_limited(self, request: web.Request, limit: int) -> bytes | web.Response:
        if request.content_length is not None and request.content_length > limit:
            return json_error(413, f"the request body is too large (more than {limit} bytes)")
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):  # read() may return early
            size += len(chunk)
            if size > limit:
                return json_error(413, f"the request body is too large (more than {limit} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def offer(self, request: web.Request) -> web.Response:
        # JSON only: a cross-site form or a "simple" text/plain fetch cannot send it without a preflight
        if request.content_type != "application/json":
            return json_error(415, "send the offer as Content-Type: application/json: {sdp, type, avatar_id?, prompt?}")
        body = await self._read_limited(request, self.config.limits.max_sdp_bytes + 4096)
        if isinstance(body, web.Response):
            return body
        try:
            params = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return json_error(400, "the request body must be JSON: {sdp, type, avatar_id?, prompt?}")
        if not isinstance(params, dict):
            return json_error(400, "the request body must be a JSON object: {sdp, type, avatar_id?, prompt?}")
        if params.get("type", "offer") != "offer":
            return json_error(400, f"expected type 'offer', got {params.get('type')!r}")
        result = await self._open(params.get("sdp"), params.get("avatar_id"), params.get("prompt"), caller_of(request),
                                  params.get("audio_source", "peer"))
        if isinstance(result, web.Response):
            return result
        session, answer = result
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "session_id": session.id, **session_paths(session)})

    async def whip(self, request: web.Request) -> web.Response:
        if request.content_type != "application/sdp":
            return json_error(415, "WHIP offers must be sent as Content-Type: application/sdp")
        body = await self._read_limited(request, self.config.limits.max_sdp_bytes)
        if isinstance(body, web.Response):
            return body
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError:
            return json_error(400, "the SDP offer is not valid UTF-8")
        result = await self._open(sdp, request.query.get("avatar_id"), request.query.get("prompt"), caller_of(request),
                                  request.query.get("audio_source", "peer"))
        if isinstance(result, web.Response):
            return result
        session, answer = result
        return web.Response(
            status=201,
            text=answer.sdp,
            content_type="application/sdp",
            headers={"Location": f"/whip/{session.id}", "X-Session-Id": session.id},
        )

    async def _open(self, sdp: Any, avatar_id: Any, prompt: Any, caller: Caller, audio_source: Any = "peer"):
        if audio_source not in AUDIO_SOURCES:
            return json_error(400, f"audio_source must be one of {', '.join(AUDIO_SOURCES)}, got {audio_source!r}")
        pushed = audio_source == "websocket"
        try:
            offer = check_offer(sdp, self.config.limits.max_sdp_bytes, needs_microphone=not pushed)
        except OfferError as exc:
            return json_error(exc.status, str(exc))
        if avatar_id is not None and not isinstance(avatar_id, str):
            return json_error(400, "avatar_id must be a string")
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > 2000):
            return json_error(400, "prompt must be a string of at most 2000 characters")
        try:
            avatar = self.avatars.get(avatar_id, caller.owner)
        except KeyError:  # someone else's upload is as unknown as one that never was
            return json_error(404, f"unknown avatar_id {avatar_id!r}; upload one with POST /avatars")
        try:
            session, answer = await self.connector.answer(
                offer, avatar, prompt or None, caller.client, self.config.audio_socket.max_buffered_s if pushed else None
            )
            describe_session(session, self.config.audio_socket, avatar_id, prompt, pushed_speech=pushed)
            return session, answer
        except OfferError as exc:
            return json_error(exc.status, str(exc))
        except CapacityError as exc:
            return json_error(503, str(exc), reason="capacity")
        except ClientLimitError as exc:
            return json_error(429, str(exc), reason="sessions_per_client")

    async def whip_delete(self, request: web.Request) -> web.Response:
        return await self.delete_session(request)

    async def whip_patch(self, request: web.Request) -> web.Response:
        # RFC 9725: a server without trickle ICE / ICE restarts answers PATCH with 405
        response = json_error(405, "trickle ICE and ICE restarts are not supported; send a complete offer")
        response.headers["Allow"] = "DELETE"
        return response

    # -- avatars -------------------------------------------------------------------------------
    async def list_avatars(self, request: web.Request) -> web.Response:
        return web.json_response({"avatars": self.avatars.list(caller_of(request).owner)})

    async def upload_avatar(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        retry_after = self.uploads.try_acquire(caller.client)
        if retry_after is not None:
            response = json_error(
                429, f"too many uploads: at most {self.uploads.count} a minute (limits.uploads_per_minute)", retry_after_s=retry_after
            )
            response.headers["Retry-After"] = str(retry_after)
            return response
        limit = self.config.limits.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            return json_error(413, f"the upload is too large (more than {limit // (1024 * 1024)} MiB)")
        if not request.content_type.startswith("multipart/"):
            return json_error(415, "upload the image as multipart/form-data with a field named 'image'")
        data, name = None, "upload"
        try:
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):  # a nested multipart/mixed holds no image field
                    continue
                if part.name in IMAGE_FIELD_NAMES or part.filename:
                    chunks, size = [], 0
                    while chunk := await part.read_chunk(64 * 1024):
                        size += len(chunk)
                        if size > limit:
                            return json_error(413, f"the upload is too large (more than {limit // (1024 * 1024)} MiB)")
                        chunks.append(chunk)
                    data, name = b"".join(chunks), part.filename or "upload"
                    break
        # aiohttp's multipart reader: ValueError (boundaries, framing), RuntimeError (a bad _charset_
        # field), its HTTP parser's errors (part headers)
        except (ValueError, RuntimeError, HttpProcessingError) as exc:
            return json_error(400, describe_multipart_error(exc))
        if data is None:
            return json_error(400, "no image in the upload: send a multipart field named 'image'")
        try:
            avatar_id = await self.avatars.add_upload(data, name, caller.owner)
        except StoreFull as exc:
            return json_error(503, str(exc), reason="avatars")
        except AvatarError as exc:
            return json_error(422, str(exc))
        return web.json_response({"avatar_id": avatar_id}, status=201)

    # -- sessions ------------------------------------------------------------------------------
    def _session(self, request: web.Request):
        session = self.sessions.get(request.match_info["session_id"])
        if session is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"unknown session {request.match_info['session_id']!r}"}),
                content_type="application/json",
            )
        return session

    async def interrupt(self, request: web.Request) -> web.Response:
        session = self._session(request)
        position = session.interrupt()
        return web.json_response({"session_id": session.id, "playback_position_s": position})

    async def delete_session(self, request: web.Request) -> web.Response:
        session = self._session(request)
        await session.close("closed by the client")
        return web.json_response({"session_id": session.id, "state": session.state})

    async def session_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._session(request).stats())
