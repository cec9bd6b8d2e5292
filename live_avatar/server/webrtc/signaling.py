"""WebRTC signaling shared by POST /offer and POST /whip: check the offer, open a session, answer.

The peer sends one audio track (sendrecv or sendonly) and may receive one video and one audio track
(m-lines it offers as recvonly/sendrecv; the browser client uses separate transceivers for its mic
and for the avatar's audio). Offers are checked before anything is allocated, so malformed input
costs nothing and never touches another session.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from live_avatar.server.config import ServerConfig
from live_avatar.server.session import AvatarSession
from live_avatar.server.sessions import SessionManager
from live_avatar.server.webrtc.aiortc_hooks import set_audio_jitter_prefetch
from live_avatar.server.webrtc.ice import pinned_host_addresses, rtc_configuration

log = logging.getLogger(__name__)

PEER_SENDS = ("sendrecv", "sendonly", None)  # None: no direction attribute means sendrecv
PEER_RECEIVES = ("sendrecv", "recvonly", None)


class OfferError(ValueError):
    """A bad offer; ``status`` is the HTTP status to answer with, the message is user-facing."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CheckedOffer:
    sdp: str
    parsed: SessionDescription


def check_offer(sdp: Any, max_bytes: int) -> CheckedOffer:
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("the offer has no SDP")
    if len(sdp.encode("utf-8", "replace")) > max_bytes:
        raise OfferError(f"the SDP offer is too large (more than {max_bytes} bytes)", status=413)
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("malformed SDP offer: it must start with 'v=0'")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises ValueError/IndexError/KeyError on bad input
        raise OfferError(f"malformed SDP offer: {exc.__class__.__name__}: {exc}") from None
    if not parsed.media:
        raise OfferError("the SDP offer has no media sections")
    if not any(m.kind == "audio" and m.port != 0 and m.direction in PEER_SENDS for m in parsed.media):
        raise OfferError("the offer has no audio track: send your microphone as an audio track (sendrecv or sendonly)")
    for m in parsed.media:
        if m.kind in ("audio", "video") and m.port != 0 and (
            m.ice is None or not m.ice.usernameFragment or not m.ice.password or m.dtls is None or not m.dtls.fingerprints
        ):
            raise OfferError("malformed SDP offer: a media section has no ICE credentials or DTLS fingerprint")
    return CheckedOffer(sdp=sdp, parsed=parsed)


class PeerConnector:
    """Creates a peer connection for a new session and negotiates it."""

    def __init__(self, config: ServerConfig, sessions: SessionManager) -> None:
        self._config = config
        self._sessions = sessions
        self._peers: set[RTCPeerConnection] = set()

    async def answer(
        self, offer: CheckedOffer, avatar: Any, prompt: str | None, client: str | None = None
    ) -> tuple[AvatarSession, RTCSessionDescription]:
        """Open a session for ``offer`` on behalf of ``client``; returns it with the local answer.
        Raises OfferError, CapacityError, ClientLimitError; frees everything it allocated when it
        fails. A session whose ICE has not connected within ``sessions.connect_timeout_s`` is
        closed (an offer that never connects must not hold a place)."""
        self._sessions.check_capacity(client)  # cheap early refusal, before any allocation
        pc = RTCPeerConnection(rtc_configuration(self._config.webrtc.ice_servers))
        self._peers.add(pc)
        session: AvatarSession | None = None
        incoming: list[MediaStreamTrack] = []
        pc.on("track", incoming.append)
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            except Exception as exc:
                raise OfferError(f"the offer could not be applied: {exc}") from None
            set_audio_jitter_prefetch(pc, self._config.webrtc.audio_jitter_prefetch)
            session = await self._sessions.create(avatar, prompt, client)
            self._wire(pc, session, offer, incoming)
            answer = await pc.createAnswer()
            with pinned_host_addresses(self._config.ice_host_addresses()):
                await pc.setLocalDescription(answer)
            session.start()
            self._expect_connection(pc, session)
            return session, pc.localDescription
        except BaseException:
            if session is not None:
                await session.close("negotiation failed")
            await self._close_pc(pc)
            raise

    def _wire(self, pc: RTCPeerConnection, session: AvatarSession, offer: CheckedOffer, incoming: list) -> None:
        audio_tracks = [t for t in incoming if t.kind == "audio"]
        if not audio_tracks:
            raise OfferError("the offer has no audio track the server can receive")
        session.attach_audio_track(audio_tracks[0])
        for extra in incoming:
            if extra is not audio_tracks[0]:
                session.discard_track(extra)

        video_out, audio_out = session.add_webrtc_consumer("peer")
        receives = {m.rtp.muxId: m for m in offer.parsed.media if m.direction in PEER_RECEIVES and m.port != 0}
        placed = {"video": False, "audio": False}
        for transceiver in pc.getTransceivers():
            media = receives.get(transceiver.mid)
            if media is None or placed.get(transceiver.kind, True):
                continue
            track = video_out if transceiver.kind == "video" else audio_out
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendrecv" if transceiver.direction in ("recvonly", "sendrecv") else "sendonly"
            placed[transceiver.kind] = True
        for kind, done in placed.items():
            if not done:  # the peer does not want this output: release its subscription
                (video_out if kind == "video" else audio_out).stop()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("session %s: connection %s", session.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await session.close(f"peer connection {pc.connectionState}")

        session.add_close_callback(lambda: self._close_pc(pc))

    def _expect_connection(self, pc: RTCPeerConnection, session: AvatarSession) -> None:
        timeout = self._config.sessions.connect_timeout_s

        def expire() -> None:
            if not session.closed and pc.iceConnectionState != "completed":  # aiortc's "connected"
                session.close_soon(f"ICE did not connect within {timeout:g} s (sessions.connect_timeout_s)")

        timer = asyncio.get_running_loop().call_later(timeout, expire)

        @pc.on("iceconnectionstatechange")
        def on_ice_state() -> None:
            if pc.iceConnectionState == "completed":
                timer.cancel()

        session.add_close_callback(timer.cancel)

    async def _close_pc(self, pc: RTCPeerConnection) -> None:
        self._peers.discard(pc)
        try:
            await pc.close()
        except Exception:
            log.exception("closing a peer connection failed")

    async def close_all(self) -> None:
        await asyncio.gather(*(self._close_pc(pc) for pc in list(self._peers)), return_exceptions=True)
