"""The outputs of every session of one server: creating them from a request, listing, stopping,
and ending them with their session. Recordings outlive their session (their file stays for download)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from live_avatar.server.config import ServerConfig
from live_avatar.server.outputs.encoder import EncoderSettings
from live_avatar.server.outputs.recording import RecordingOutput
from live_avatar.server.outputs.stream_push import (
    OutputRequestError,
    StreamPushOutput,
    check_push_url,
)
from live_avatar.server.outputs.virtual_camera import (
    VirtualCameraOutput,
    check_device,
    open_pyvirtualcam,
)
from live_avatar.server.outputs.whep import WhepViewer
from live_avatar.server.outputs.worker import ThreadedOutput
from live_avatar.server.webrtc.signaling import CheckedOffer

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("rtmp", "srt", "record", "virtual_camera")
OUTPUT_ID = re.compile(r"^[0-9a-f]{16}$")
KEPT_FINISHED = 20  # stopped outputs a session keeps listing
FRAME_SIZE_WAIT_S = 5.0  # a virtual camera is opened at the session's frame size: wait this long for a frame


class OutputRegistry:
    def __init__(self, config: ServerConfig, camera_factory: Callable[..., Any] = open_pyvirtualcam) -> None:
        self.config = config
        self.settings = EncoderSettings(
            keyframe_interval_s=config.outputs.keyframe_interval_s,
            video_bitrate=config.outputs.video_bitrate,
            audio_bitrate=config.outputs.audio_bitrate,
            x264_preset=config.outputs.x264_preset,
        )
        self.camera_factory = camera_factory  # tests replace the camera
        self._outputs: dict[str, dict[str, ThreadedOutput]] = {}  # session id -> output id -> output
        self._viewers: dict[str, dict[str, WhepViewer]] = {}
        self._attached: set[str] = set()

    @property
    def recordings_dir(self) -> Path:
        return Path(self.config.outputs.recordings_dir)

    # -- sessions ------------------------------------------------------------------------------
    def _attach(self, session: Any) -> None:
        """Hook a session once: its stats list its outputs, its close ends them."""
        if session.id in self._attached:
            return
        self._attached.add(session.id)
        session.stats_sections["outputs"] = lambda: self.describe(session.id)
        session.add_close_callback(lambda: self._session_closed(session.id))

    async def _session_closed(self, session_id: str) -> None:
        viewers = list(self._viewers.pop(session_id, {}).values())
        outputs = list(self._outputs.pop(session_id, {}).values())
        self._attached.discard(session_id)
        await asyncio.gather(*(v.close("session ended") for v in viewers), *(o.stop() for o in outputs), return_exceptions=True)

    def describe(self, session_id: str) -> list[dict[str, Any]]:
        items = list(self._viewers.get(session_id, {}).values()) + list(self._outputs.get(session_id, {}).values())
        return [item.describe() for item in items]

    # -- WHEP viewers --------------------------------------------------------------------------
    async def add_viewer(self, session: Any, offer: CheckedOffer) -> tuple[WhepViewer, Any]:
        viewers = self._viewers.setdefault(session.id, {})
        limit = self.config.outputs.max_viewers_per_session
        if len(viewers) >= limit:
            raise OutputRequestError(f"this session already has {limit} viewers (outputs.max_viewers_per_session)", status=429)
        self._attach(session)
        viewer = WhepViewer(session, self.config)
        answer = await viewer.answer(offer)  # OfferError: nothing was kept
        if session.closed:
            await viewer.close("session ended")
            raise OutputRequestError("the session ended while the viewer connected", status=404)
        viewers[viewer.id] = viewer
        viewer.on_closed(lambda v: self._viewers.get(v.session_id, {}).pop(v.id, None))
        return viewer, answer

    async def remove_viewer(self, session_id: str, viewer_id: str) -> WhepViewer:
        viewer = self._viewers.get(session_id, {}).get(viewer_id)
        if viewer is None:
            raise OutputRequestError(f"unknown viewer {viewer_id!r} of session {session_id!r}", status=404)
        await viewer.close("closed by the viewer")
        return viewer

    # -- pushes, recordings, cameras -----------------------------------------------------------
    async def add_output(self, session: Any, spec: Any) -> ThreadedOutput:
        """Start the output ``spec`` asks for; OutputRequestError says what is wrong with it."""
        if not isinstance(spec, dict):
            raise OutputRequestError('send a JSON object: {"type": "rtmp", "url": "rtmp://..."}, {"type": "record"} or {"type": "virtual_camera"}')
        kind = spec.get("type")
        if kind not in OUTPUT_TYPES:
            raise OutputRequestError(f"unknown output type {kind!r}: use one of {', '.join(OUTPUT_TYPES)}")
        running = [o for o in self._outputs.get(session.id, {}).values() if o.state not in ("stopped", "failed")]
        limit = self.config.outputs.max_outputs_per_session
        if len(running) >= limit:
            raise OutputRequestError(f"this session already has {limit} outputs running (outputs.max_outputs_per_session)", status=429)
        cfg = self.config.outputs
        if kind in ("rtmp", "srt"):
            scheme = await check_push_url(spec.get("url"))
            if scheme.rstrip("s") != kind:
                raise OutputRequestError(f"a {kind} output needs a {kind}:// URL, got {scheme}://")
            output: ThreadedOutput = StreamPushOutput(
                session, spec["url"], self.settings, reconnect_initial_s=cfg.reconnect_initial_s,
                reconnect_max_s=cfg.reconnect_max_s, io_timeout_s=cfg.io_timeout_s,
            )
        elif kind == "record":
            if "path" in spec or "file" in spec:
                raise OutputRequestError("recordings are written under the server's recordings folder; a path cannot be chosen")
            try:
                self.recordings_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputRequestError(f"the recordings folder cannot be created: {exc.strerror}", status=503) from None
            output = RecordingOutput(session, self.recordings_dir, self.settings)
        else:
            device = check_device(spec.get("device"))
            height, width = await self._frame_size(session)
            output = await asyncio.to_thread(VirtualCameraOutput.open, session, device, width, height, self.settings.fps, self.camera_factory)
        if session.closed:
            raise OutputRequestError("the session ended", status=404)
        self._attach(session)
        self._outputs.setdefault(session.id, {})[output.id] = output
        output.start()
        log.info("session %s: %s output %s started", session.id, kind, output.id)
        return output

    @staticmethod
    async def _frame_size(session: Any) -> tuple[int, int]:
        probe = session.fanout.subscribe("frame-size-probe", maxsize=1)
        try:
            async with asyncio.timeout(FRAME_SIZE_WAIT_S):
                slot = await probe.get()
        except TimeoutError:
            slot = None
        finally:
            probe.close()
        if slot is None:
            raise OutputRequestError("the session has produced no frame yet; try again in a moment", status=409)
        return slot.frame.shape[:2]

    def list_outputs(self, session_id: str) -> list[dict[str, Any]]:
        return self.describe(session_id)

    async def stop_output(self, session_id: str, output_id: str) -> dict[str, Any]:
        outputs = self._outputs.get(session_id, {})
        output = outputs.get(output_id)
        if output is None:
            viewer = self._viewers.get(session_id, {}).get(output_id)
            if viewer is not None:
                await viewer.close("stopped by the client")
                return viewer.describe()
            raise OutputRequestError(f"unknown output {output_id!r} of session {session_id!r}", status=404)
        await output.stop()
        # a stopped output stays listed with its final state (a recording's download link), the
        # oldest of them forgotten past KEPT_FINISHED
        finished = [key for key, o in outputs.items() if o.state in ("stopped", "failed")]
        for key in finished[: max(0, len(finished) - KEPT_FINISHED)]:
            del outputs[key]
        return output.describe()

    def recording_path(self, output_id: str) -> Path | None:
        """The file of a recording (running or finished, this run of the server or an earlier one)."""
        if not OUTPUT_ID.match(output_id):
            return None
        path = self.recordings_dir / f"{output_id}.mp4"
        return path if path.is_file() else None

    async def close_all(self) -> None:
        for session_id in list(set(self._outputs) | set(self._viewers)):
            await self._session_closed(session_id)
