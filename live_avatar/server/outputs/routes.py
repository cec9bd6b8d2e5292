"""HTTP routes of the outputs (registered by server/routes.py next to the session routes):

POST   /sessions/{id}/whep                  WHEP: application/sdp receive-only offer -> 201, Location, answer
DELETE /sessions/{id}/whep/{viewer_id}      end that viewer
GET    /sessions/{id}/view                  the viewer page (an OBS Browser Source): video, audio unless ?audio=0
POST   /sessions/{id}/outputs               {"type": "rtmp"|"srt", "url"} | {"type": "record"} | {"type": "virtual_camera", "device"?}
GET    /sessions/{id}/outputs               every output and viewer with its state
DELETE /sessions/{id}/outputs/{output_id}   stop one
GET    /recordings/{output_id}              a recording's MP4 (also while it is written)

``latest`` in place of a session id (``/sessions/latest/view``, ``/sessions/latest/whep``) names the
caller's newest live session (same token, or without tokens the same address): a viewer page on
that URL follows the speaker from one session to the next, e.g. after a reconnect.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from live_avatar.resources import CLIENT_DIR
from live_avatar.server.auth import caller_of
from live_avatar.server.outputs.registry import OutputRegistry
from live_avatar.server.outputs.stream_push import OutputRequestError
from live_avatar.server.webrtc.signaling import OfferError, check_offer

VIEW_PAGE = CLIENT_DIR / "view.html"
LATEST = "latest"  # stands for the caller's newest live session
MAX_OUTPUT_REQUEST_BYTES = 8192


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class OutputRoutes:
    def __init__(self, api: Any) -> None:
        self.api = api  # routes.Api: its sessions (bound at startup), config and body reader
        self.registry = OutputRegistry(api.config)

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/sessions/{session_id}/whep", self.whep)
        r.add_delete("/sessions/{session_id}/whep/{viewer_id}", self.whep_delete)
        r.add_patch("/sessions/{session_id}/whep/{viewer_id}", self.whep_patch)
        r.add_get("/sessions/{session_id}/view", self.view_page)
        r.add_post("/sessions/{session_id}/outputs", self.add_output)
        r.add_get("/sessions/{session_id}/outputs", self.list_outputs)
        r.add_delete("/sessions/{session_id}/outputs/{output_id}", self.stop_output)
        r.add_get("/recordings/{output_id}", self.recording)
        app.on_shutdown.append(self._shutdown)

    async def _shutdown(self, app: web.Application) -> None:
        await self.registry.close_all()

    def _viewed_session(self, request: web.Request) -> Any:
        """The session a viewer asks for: by id, or ``latest`` (see the module docstring)."""
        if request.match_info["session_id"] != LATEST:
            return self.api._session(request)
        client = caller_of(request).client
        mine = [s for s in self.api.sessions.all() if s.client == client and not s.closed]
        if not mine:
            raise web.HTTPNotFound(
                text=json.dumps({"error": "you have no live session yet (latest: the newest one opened with your token or from your address)"}),
                content_type="application/json",
            )
        return max(mine, key=lambda s: s.created_at)

    # -- WHEP ----------------------------------------------------------------------------------
    async def whep(self, request: web.Request) -> web.Response:
        session = self._viewed_session(request)
        if request.content_type != "application/sdp":
            return _error(415, "WHEP offers must be sent as Content-Type: application/sdp")
        body = await self.api._read_limited(request, self.api.config.limits.max_sdp_bytes)
        if isinstance(body, web.Response):
            return body
        try:
            offer = check_offer(body.decode("utf-8"), self.api.config.limits.max_sdp_bytes, needs_microphone=False)
            viewer, answer = await self.registry.add_viewer(session, offer)
        except UnicodeDecodeError:
            return _error(400, "the SDP offer is not valid UTF-8")
        except (OfferError, OutputRequestError) as exc:
            return _error(exc.status, str(exc))
        return web.Response(
            status=201, text=answer.sdp, content_type="application/sdp",
            headers={"Location": viewer.location, "X-Viewer-Id": viewer.id, "X-Session-Id": session.id},
        )

    async def whep_delete(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        try:
            viewer = await self.registry.remove_viewer(session_id, request.match_info["viewer_id"])
        except OutputRequestError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(viewer.describe())

    async def whep_patch(self, request: web.Request) -> web.Response:
        response = _error(405, "trickle ICE and ICE restarts are not supported; send a new offer")
        response.headers["Allow"] = "DELETE"
        return response

    async def view_page(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["session_id"] != LATEST:  # 'latest' may have no session yet: the page waits for one
            self.api._session(request)  # 404 JSON for an unknown session (once loaded, the page retries by itself)
        if not VIEW_PAGE.is_file():
            return _error(404, "the viewer page (live_avatar/client/view.html) is not installed")
        return web.FileResponse(VIEW_PAGE, headers={"Cache-Control": "no-store"})

    # -- outputs -------------------------------------------------------------------------------
    async def add_output(self, request: web.Request) -> web.Response:
        session = self.api._session(request)
        if request.content_type != "application/json":
            return _error(415, 'send the output as Content-Type: application/json, e.g. {"type": "record"}')
        body = await self.api._read_limited(request, MAX_OUTPUT_REQUEST_BYTES)
        if isinstance(body, web.Response):
            return body
        try:
            spec = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _error(400, 'the request body must be JSON, e.g. {"type": "rtmp", "url": "rtmp://host/app/key"}')
        try:
            output = await self.registry.add_output(session, spec)
        except OutputRequestError as exc:
            return _error(exc.status, str(exc))
        return web.json_response({"output_id": output.id, **output.describe()}, status=201)

    async def list_outputs(self, request: web.Request) -> web.Response:
        session = self.api._session(request)
        return web.json_response({"session_id": session.id, "outputs": self.registry.list_outputs(session.id)})

    async def stop_output(self, request: web.Request) -> web.Response:
        session = self.api._session(request)
        try:
            described = await self.registry.stop_output(session.id, request.match_info["output_id"])
        except OutputRequestError as exc:
            return _error(exc.status, str(exc))
        return web.json_response(described)

    async def recording(self, request: web.Request) -> web.StreamResponse:
        output_id = request.match_info["output_id"]
        path = self.registry.recording_path(output_id)
        if path is None:
            return _error(404, f"unknown recording {output_id!r}")
        return web.FileResponse(
            path, headers={"Content-Type": "video/mp4", "Content-Disposition": f'attachment; filename="recording-{output_id}.mp4"'}
        )
