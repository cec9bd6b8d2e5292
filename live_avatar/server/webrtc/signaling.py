"""WebRTC signaling shared by POST /offer and POST /whip: check the offer, open a session, answer.

The peer sends one audio track (sendrecv or sendonly) and may receive one video and one audio track
(m-lines it offers as recvonly/sendrecv; the browser client uses separate transceivers for its mic
and for the avatar's audio). Offers are checked before anything is allocated, so malformed input
costs nothing and never touches another session.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from live_avatar.server.config import ServerConfig
from live_avatar.server.gc_tuning import collect_soon
from live_avatar.server.session import AvatarSession
from live_avatar.server.sessions import SessionManager
from live_avatar.server.webrtc.aiortc_hooks import (
    pinned_host_addresses,
    set_audio_jitter_prefetch,
)
from live_avatar.server.webrtc.ice import rtc_configuration

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


MALFORMED = "the SDP offer is malformed"
_SHOWN_LINE = 60  # characters of an offending line quoted back
# what each kind of line aiortc parses must look like (RFC 8866 and the WebRTC attributes)
_EXPECTED_LINES = {
    "v": "v=0",
    "c": "c=IN IP4 <address> (or IN IP6)",
    "m": "m=<media> <port> <protocol> <formats>, e.g. m=audio 9 UDP/TLS/RTP/SAVPF 111 (RTP payload types 0-127)",
    "a=candidate": "a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type>",
    "a=extmap": "a=extmap:<id>[/<direction>] <uri>",
    "a=fingerprint": "a=fingerprint:<hash function> <fingerprint>",
    "a=fmtp": "a=fmtp:<payload type of an a=rtpmap line of the same m= section> <parameters>",
    "a=max-message-size": "a=max-message-size:<bytes>",
    "a=rtcp": "a=rtcp:<port> [IN IP4 <address>]",
    "a=rtcp-fb": "a=rtcp-fb:<payload type> <feedback type> [<parameter>]",
    "a=rtpmap": "a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]",
    "a=sctp-port": "a=sctp-port:<port>",
    "a=sctpmap": "a=sctpmap:<number> <description>",
    "a=setup": "a=setup:actpass, a=setup:active or a=setup:passive",
    "a=ssrc": "a=ssrc:<ssrc> <attribute>:<value>",
    "a=ssrc-group": "a=ssrc-group:<semantics> <ssrc> ...",
}
_SDP_LINE = re.compile(r"[a-z]=")
_NEEDS_CODECS = ("a=fmtp", "a=rtcp-fb")  # aiortc reads these against the section's a=rtpmap lines


def _shown(line: str) -> str:
    return repr(line if len(line) <= _SHOWN_LINE else line[: _SHOWN_LINE - 3] + "...")


def _line_kind(line: str) -> str:
    return "a=" + line[2:].split(":", 1)[0] if line.startswith("a=") else line[:1]


def _parses(text: str) -> bool:
    try:
        SessionDescription.parse(text)
    except Exception:  # noqa: BLE001 - aiortc's parser fails with asserts, ValueError, KeyError, ...
        return False
    return True


def _first_bad_line(lines: list[str]) -> int | None:
    """Index of the first line aiortc's SDP parser rejects on its own, or None.

    aiortc parses line by line: each line is tried alone after 'v=0' (a media line after its
    section's m= line, an a=fmtp or a=rtcp-fb line also with the section's valid a=rtpmap lines),
    so the error names the line that is wrong instead of the parser's exception."""
    m_line: str | None = None
    rtpmaps: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("m="):
            m_line = line
            rtpmaps = []
            for later in lines[i + 1 :]:
                if later.startswith("m="):
                    break
                if later.startswith("a=rtpmap:") and _parses(f"v=0\r\n{line}\r\n{later}"):
                    rtpmaps.append(later)
        if m_line is None and line.startswith("v="):
            context = [line]
        elif m_line is None or line is m_line:
            context = ["v=0", line]
        else:
            context = ["v=0", m_line, *(rtpmaps if _line_kind(line) in _NEEDS_CODECS else ()), line]
        if not _parses("\r\n".join(context)):
            return i
    return None


def _codecs_in_common(media: Any) -> bool:
    supported = {(c.mimeType.lower(), c.clockRate) for c in RTCRtpReceiver.getCapabilities(media.kind).codecs}
    return any((c.mimeType.lower(), c.clockRate) in supported for c in media.rtp.codecs)


def _supported_codecs(kind: str) -> str:
    names = [f"{c.mimeType.split('/', 1)[1]}/{c.clockRate}" for c in RTCRtpReceiver.getCapabilities(kind).codecs]
    return ", ".join(n for n in dict.fromkeys(names) if not n.startswith("rtx/"))


def check_offer(sdp: Any, max_bytes: int, needs_microphone: bool = True) -> CheckedOffer:
    """Parse and check an SDP offer before anything is allocated for it; raises OfferError with a
    message that says what is wrong (and on which line), never the parser's exception.
    ``needs_microphone=False``: the session's speech comes from the audio WebSocket, so the peer
    may only receive."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("the offer has no SDP")
    if len(sdp.encode("utf-8", "replace")) > max_bytes:
        raise OfferError(f"the SDP offer is too large (more than {max_bytes} bytes)", status=413)
    lines = sdp.splitlines()  # as aiortc splits them, so that line numbers match what it reads
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if numbered[0][1].strip() != "v=0":
        raise OfferError(f"{MALFORMED}: line {numbered[0][0]} must be 'v=0', the first line of any SDP")
    for n, line in numbered:
        if not _SDP_LINE.match(line):
            raise OfferError(f"{MALFORMED}: line {n} ({_shown(line)}) is not an SDP line: expected <type>=<value>, e.g. a=mid:0")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception:  # noqa: BLE001 - see _first_bad_line
        bad = _first_bad_line(lines)
        if bad is None:
            raise OfferError(f"{MALFORMED}: its lines do not form a valid session description") from None
        line = lines[bad]
        expected = _EXPECTED_LINES.get(_line_kind(line), "a valid value for this attribute")
        raise OfferError(f"{MALFORMED}: line {bad + 1} ({_shown(line)}) is not valid: expected {expected}") from None

    m_lines = [n for n, line in enumerate(lines, 1) if line.startswith("m=")]
    sections = list(zip(m_lines, parsed.media, strict=False))  # aiortc parses one media per m= line
    if not sections:
        raise OfferError("the SDP offer has no m= sections: send your microphone as an audio track (sendrecv or sendonly)")
    audio = [(n, m) for n, m in sections if m.kind == "audio"]
    if not needs_microphone:
        pass
    elif not audio:
        raise OfferError("the SDP offer has no audio m= section: send your microphone as an audio track (sendrecv or sendonly)")
    elif not any(m.port != 0 and m.direction in PEER_SENDS for _, m in audio):
        n, m = audio[0]
        state = "rejected (port 0)" if m.port == 0 else m.direction
        raise OfferError(f"the SDP offer sends no audio: its audio m= section at line {n} is {state}; "
                         "send your microphone as an audio track (sendrecv or sendonly)")
    # what aiortc's setRemoteDescription and createAnswer require of every m= section (their own
    # errors say less, or come as AttributeErrors from deep inside)
    mids: dict[str, int] = {}
    for n, m in sections:
        section = f"the {m.kind} m= section at line {n}"
        if not m.rtp.muxId:
            raise OfferError(f"{MALFORMED}: {section} has no a=mid attribute")
        if m.rtp.muxId in mids:
            raise OfferError(f"{MALFORMED}: {section} has the same a=mid ({m.rtp.muxId!r}) as the one at line {mids[m.rtp.muxId]}")
        mids[m.rtp.muxId] = n
        if m.ice is None or not m.ice.usernameFragment or not m.ice.password:
            raise OfferError(f"{MALFORMED}: {section} has no ICE credentials (a=ice-ufrag and a=ice-pwd)")
        if m.kind not in ("audio", "video", "application"):
            continue
        if m.dtls is None:
            raise OfferError(f"{MALFORMED}: {section} has no a=setup attribute (the DTLS role)")
        if not m.dtls.fingerprints:
            raise OfferError(f"{MALFORMED}: {section} has no DTLS fingerprint (a=fingerprint)")
        if m.kind == "application":
            if m.profile == "DTLS/SCTP" and not (m.fmt and re.fullmatch("[0-9]+", str(m.fmt[0]))):
                raise OfferError(f"{MALFORMED}: line {n} ({_shown(lines[n - 1])}) is not valid: expected m=application <port> DTLS/SCTP <SCTP port>")
            continue
        if not m.rtcp_mux:
            raise OfferError(f"{MALFORMED}: {section} does not multiplex RTCP (a=rtcp-mux is required)")
        if not _codecs_in_common(m):
            raise OfferError(f"the SDP offer has no codec the server supports in {section} (it supports {_supported_codecs(m.kind)})")
    for group in parsed.group:
        unknown = [str(mid) for mid in group.items if str(mid) not in mids]
        if unknown:
            raise OfferError(f"{MALFORMED}: a=group:{group.semantic} names a=mid {unknown[0]!r}, which no m= section has")
    return CheckedOffer(sdp=sdp, parsed=parsed)


# what aiortc's setRemoteDescription says -> what the client is told; for what check_offer does not
# catch first (it should catch all of it: a new entry here is a check to add there)
_AIORTC_ERRORS = {
    "ice username fragment or password is missing": "an m= section has no ICE credentials (a=ice-ufrag and a=ice-pwd)",
    "rtcp mux is not enabled": "an m= section does not multiplex RTCP (a=rtcp-mux is required)",
    "failed to set remote": "an m= section has no codec the server supports",
}


def offer_error_from_aiortc(exc: Exception) -> OfferError:
    """The OfferError for an exception aiortc raised applying an offer that check_offer accepted."""
    detail = str(exc).strip()
    log.warning("aiortc rejected an offer that check_offer accepted: %s: %s", type(exc).__name__, detail or "(no message)")
    reason = next((text for key, text in _AIORTC_ERRORS.items() if key in detail.lower()), None)
    return OfferError(f"the SDP offer could not be applied: {reason or 'it is not a usable WebRTC offer'}")


class PeerConnector:
    """Creates a peer connection for a new session and negotiates it."""

    def __init__(self, config: ServerConfig, sessions: SessionManager) -> None:
        self._config = config
        self._sessions = sessions
        self._peers: set[RTCPeerConnection] = set()

    async def answer(
        self, offer: CheckedOffer, avatar: Any, prompt: str | None, client: str | None = None,
        buffered_speech_s: float | None = None,
    ) -> tuple[AvatarSession, RTCSessionDescription]:
        """Open a session for ``offer`` on behalf of ``client``; returns it with the local answer.
        Raises OfferError, CapacityError, ClientLimitError; frees everything it allocated when it
        fails. A session whose connection (ICE, then DTLS) is not up within
        ``sessions.connect_timeout_s`` is closed (an offer that never connects must not hold a
        place). ``buffered_speech_s``: the session's speech comes from the audio WebSocket (see
        SessionManager.create), not the peer."""
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
                raise offer_error_from_aiortc(exc) from None
            set_audio_jitter_prefetch(pc, self._config.webrtc.audio_jitter_prefetch)
            session = await self._sessions.create(avatar, prompt, client, buffered_speech_s=buffered_speech_s)
            self._wire(pc, session, offer, incoming)
            try:  # check_offer covers what these need; anything it missed is still the offer's fault
                answer = await pc.createAnswer()
                with pinned_host_addresses(self._config.ice_host_addresses()):
                    await pc.setLocalDescription(answer)
            except Exception as exc:
                raise offer_error_from_aiortc(exc) from None
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
        if session.audio_source == "peer":
            if not audio_tracks:
                raise OfferError("the offer has no audio track the server can receive")
            session.attach_audio_track(audio_tracks[0])
        for extra in incoming:
            if session.audio_source != "peer" or extra is not audio_tracks[0]:
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
            if session.closed or pc.connectionState == "connected":
                return
            if pc.iceConnectionState != "completed":  # aiortc's "connected"
                session.close_soon(f"ICE did not connect within {timeout:g} s (sessions.connect_timeout_s)")
            else:  # aiortc logs a failed handshake at debug level only: say it here
                session.close_soon(
                    f"the DTLS handshake did not complete within {timeout:g} s (sessions.connect_timeout_s) "
                    "though ICE connected; a cryptography release that pyOpenSSL does not accept does this "
                    "silently (pip check)"
                )

        timer = asyncio.get_running_loop().call_later(timeout, expire)

        @pc.on("connectionstatechange")
        def on_connection_state() -> None:
            if pc.connectionState == "connected":  # ICE and DTLS
                timer.cancel()

        session.add_close_callback(timer.cancel)

    async def _close_pc(self, pc: RTCPeerConnection) -> None:
        self._peers.discard(pc)
        try:
            await pc.close()
        except Exception:
            log.exception("closing a peer connection failed")
        collect_soon()  # the closed connection is cyclic garbage that holds native encoder threads

    async def close_all(self) -> None:
        await asyncio.gather(*(self._close_pc(pc) for pc in list(self._peers)), return_exceptions=True)
