"""WHEP egress (draft-ietf-wish-whep): a viewer posts a receive-only SDP offer and gets the
session's video and speech over its own peer connection.

Each viewer's two tracks subscribe to the session's fan-out like the speaker's own: the same slots,
stamped by the same MediaClock, so every viewer gets the same frames with the speech in sync, and
a viewer whose connection stalls loses only its own queued slots. A viewer ends with DELETE on its
Location, when its connection fails or closes, when ICE does not connect in time, or with the session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from live_avatar.server.gc_tuning import collect_soon
from live_avatar.server.media.tracks import AvatarVideoTrack, SyncedAudioTrack
from live_avatar.server.outputs.worker import new_output_id
from live_avatar.server.webrtc.aiortc_hooks import pinned_host_addresses
from live_avatar.server.webrtc.ice import rtc_configuration
from live_avatar.server.webrtc.signaling import (
    PEER_RECEIVES,
    CheckedOffer,
    OfferError,
    offer_error_from_aiortc,
)

log = logging.getLogger(__name__)


def check_viewer_offer(offer: CheckedOffer) -> None:
    """A WHEP offer must ask for the session's video or audio (recvonly or sendrecv m= sections)."""
    if not any(m.kind in ("video", "audio") and m.port != 0 and m.direction in PEER_RECEIVES for m in offer.parsed.media):
        raise OfferError("a WHEP offer must receive the session's video and/or audio (m= sections with a=recvonly)")


class WhepViewer:
    type = "whep"

    def __init__(self, session: Any, config: Any) -> None:
        self.id = new_output_id()
        self.session = session
        self.session_id = session.id
        self._config = config  # ServerConfig: ICE servers and host addresses
        self.pc = RTCPeerConnection(rtc_configuration(config.webrtc.ice_servers))
        self.video: AvatarVideoTrack | None = None
        self.audio: SyncedAudioTrack | None = None
        self.created_at = time.time()
        self.closed = False
        self.close_reason: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_closed: list[Any] = []

    @property
    def location(self) -> str:
        return f"/sessions/{self.session_id}/whep/{self.id}"

    async def answer(self, offer: CheckedOffer) -> RTCSessionDescription:
        """Negotiate; raises OfferError (and frees the connection) when the offer cannot be used."""
        check_viewer_offer(offer)
        try:
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds; offer_error_from_aiortc names it
                raise offer_error_from_aiortc(exc) from None
            self._attach_tracks(offer)
            try:
                answer = await self.pc.createAnswer()
                with pinned_host_addresses(self._config.ice_host_addresses()):
                    await self.pc.setLocalDescription(answer)
            except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds; offer_error_from_aiortc names it
                raise offer_error_from_aiortc(exc) from None
        except BaseException:
            await self.close("negotiation failed")
            raise
        self.pc.on("connectionstatechange", self._on_connection_state)
        timeout = self._config.sessions.connect_timeout_s
        self._timer = asyncio.get_running_loop().call_later(timeout, self._expire, timeout)
        return self.pc.localDescription

    def _attach_tracks(self, offer: CheckedOffer) -> None:
        wanted = {m.rtp.muxId: m for m in offer.parsed.media if m.direction in PEER_RECEIVES and m.port != 0}
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid not in wanted:
                continue
            if transceiver.kind == "video" and self.video is None:
                self.video = AvatarVideoTrack(self.session.fanout.subscribe(f"whep-{self.id}-video"), self.session.clock)
                track = self.video
            elif transceiver.kind == "audio" and self.audio is None:
                self.audio = SyncedAudioTrack(self.session.fanout.subscribe(f"whep-{self.id}-audio"), self.session.clock)
                track = self.audio
            else:
                continue
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"

    def _expire(self, timeout: float) -> None:
        if not self.closed and self.pc.iceConnectionState != "completed":
            asyncio.ensure_future(self.close(f"ICE did not connect within {timeout:g} s"))

    async def _on_connection_state(self) -> None:
        if self.pc.connectionState == "connected" and self._timer is not None:
            self._timer.cancel()
        if self.pc.connectionState in ("failed", "closed"):
            await self.close(f"viewer connection {self.pc.connectionState}")

    def on_closed(self, callback) -> None:
        self._on_closed.append(callback)

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed, self.close_reason = True, reason
        log.info("session %s: WHEP viewer %s closed: %s", self.session_id, self.id, reason)
        if self._timer is not None:
            self._timer.cancel()
        for track in (self.video, self.audio):
            if track is not None:
                track.stop()  # releases its fan-out subscription
        try:
            await self.pc.close()
        except Exception:
            log.exception("closing a WHEP viewer's peer connection failed")
        collect_soon()  # a closed connection is cyclic garbage holding native encoder threads
        for callback in self._on_closed:
            callback(self)

    @property
    def state(self) -> str:
        if self.closed:
            return "closed"
        return {"connected": "live", "new": "connecting", "connecting": "connecting"}.get(self.pc.connectionState, self.pc.connectionState)

    def describe(self) -> dict[str, Any]:
        return {
            "output_id": self.id,
            "type": self.type,
            "session_id": self.session_id,
            "state": self.state,
            "location": self.location,
            "frames_sent": self.video.frames_sent if self.video is not None else 0,
        }
