"""RTMP / SRT push of a session: H.264 + AAC encoded once for this output, in its own thread.

The ingest may go away (a restarted server, a network blip): the push closes what it had, waits
(backoff from ``reconnect_initial_s`` doubling to ``reconnect_max_s``), throws away the slots of
that time and connects again with a fresh stream; its state says which (connecting, live,
reconnecting) and the last error. A URL whose scheme is wrong or whose host does not resolve is
refused before anything starts (``check_push_url``: HTTP 422); a host that resolves but does not
answer is an output in the ``reconnecting`` state, since an ingest may come up later.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import av

from live_avatar.server.outputs.encoder import EncoderSettings, MuxTarget, SlotEncoder
from live_avatar.server.outputs.worker import ThreadedOutput

log = logging.getLogger(__name__)

SCHEMES = {"rtmp": "flv", "rtmps": "flv", "srt": "mpegts"}
DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443, "srt": 9000}
MAX_URL_CHARS = 2048
RESOLVE_TIMEOUT_S = 5.0


class OutputRequestError(ValueError):
    """A request for an output that cannot be served; ``status`` is the HTTP status, the message is user-facing."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@functools.cache
def protocol_available(scheme: str) -> bool:
    """Whether PyAV's FFmpeg was built with this protocol (the wheels have RTMP, not SRT). Probed
    once by opening a container with nothing listening on the discard port: only a missing
    protocol fails with ProtocolNotFoundError."""
    try:
        container = av.open(f"{scheme}://127.0.0.1:9", "w", format=SCHEMES[scheme], options={"rw_timeout": "200000", "timeout": "200000"})
        stream = container.add_stream("aac", rate=48000, layout="mono")
        stream.bit_rate = 64000
        try:
            container.start_encoding()
        finally:
            container.close()
    except av.error.ProtocolNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - refused, timed out...: the protocol exists
        return True
    return True


def redact_url(url: str) -> str:
    """The URL without its stream key (its last path part, or a query) or password, for listings and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rsplit("/", 1)[0] + "/***" if parts.path.count("/") > 1 else parts.path
    return f"{parts.scheme}://{netloc}{path}" + ("?***" if parts.query else "")


async def check_push_url(url: Any) -> str:
    """The scheme of a usable push URL; raises OutputRequestError that says what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise OutputRequestError("'url' must be the ingest URL, e.g. rtmp://live.example.org/app/STREAM_KEY")
    if len(url) > MAX_URL_CHARS:
        raise OutputRequestError(f"'url' is too long (more than {MAX_URL_CHARS} characters)")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise OutputRequestError("'url' is not a valid URL (check the host and port)") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise OutputRequestError(f"unsupported URL scheme {parts.scheme!r}: use rtmp://, rtmps:// or srt://")
    if not parts.hostname:
        raise OutputRequestError(f"'url' has no host: expected {scheme}://HOST[:PORT]/...")
    if scheme.startswith("rtmp") and parts.path.count("/") < 2:
        raise OutputRequestError("an RTMP URL needs an application and a stream key: rtmp://HOST[:PORT]/APP/STREAM_KEY")
    if not await asyncio.to_thread(protocol_available, scheme):
        raise OutputRequestError(f"this server's FFmpeg (the PyAV build) has no {scheme.upper()} support; use rtmp:// instead", status=422)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            await asyncio.get_running_loop().getaddrinfo(parts.hostname, port or DEFAULT_PORTS[scheme])
    except (OSError, TimeoutError):
        raise OutputRequestError(f"the ingest host {parts.hostname!r} does not resolve; check the URL", status=422) from None
    return scheme


class StreamPushOutput(ThreadedOutput):
    def __init__(
        self,
        session: Any,
        url: str,
        settings: EncoderSettings,
        *,
        reconnect_initial_s: float = 1.0,
        reconnect_max_s: float = 10.0,
        io_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(session)
        self.url = url.strip()
        self.scheme = urlsplit(self.url).scheme.lower()
        self.type = self.scheme  # rtmp, rtmps or srt
        self.settings = settings
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.io_timeout_s = io_timeout_s
        self.connects = 0  # successful connections; more than one means it reconnected
        self.frames_written = 0  # video frames sent, over every connection (repeats for missed slots included)
        self.slots_encoded = 0  # slots this output received and encoded
        self.live_since: float | None = None
        self._last_write = 0.0

    def _target(self) -> MuxTarget:
        # FFmpeg's RTMP protocol ignores rw_timeout when PyAV opens it for writing (and PyAV's
        # timeout= only guards reads): a closed or reset ingest fails the next write at once, but
        # one that accepts and then stops reading holds the worker (only this output: its queue
        # drops slots) until it reads again; reported_state says "stalled" meanwhile
        options = {"timeout": str(int(self.io_timeout_s * 1e6)), "mode": "caller"} if self.scheme == "srt" else {}
        container_options = {"flvflags": "no_duration_filesize"} if self.scheme.startswith("rtmp") else {}
        return MuxTarget(self.url, SCHEMES[self.scheme], options, container_options)

    def work(self) -> None:
        backoff = self.reconnect_initial_s
        while not self._stopping.is_set():
            slot = self.next_slot()
            if slot is None:
                return
            if slot is False:
                continue
            self.state = "connecting" if self.connects == 0 else "reconnecting"
            encoder = None
            try:
                height, width = slot.frame.shape[:2]
                encoder = SlotEncoder(self._target(), self.settings, width, height, slot.audio.size)
                written_before = self.frames_written
                self._encode(encoder, slot, written_before)  # the first write sends the header: the connection is up
                self.connects += 1
                self.state, self.error, self.live_since = "live", None, time.time()
                backoff = self.reconnect_initial_s
                while (slot := self.next_slot()) is not None:
                    if slot is not False:
                        self._encode(encoder, slot, written_before)
                encoder.close()
                return
            except Exception as exc:  # noqa: BLE001 - any failure of the ingest: reconnect
                self.error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
                log.warning("output %s: push to %s failed (%s); retrying in %.1f s", self.id, redact_url(self.url), self.error, backoff)
                if encoder is not None:
                    try:
                        encoder.close(flush=False)
                    except Exception as close_exc:  # noqa: BLE001 - the connection is already gone
                        log.debug("output %s: closing the broken push: %s", self.id, close_exc)
            self.state, self.live_since = "reconnecting", None
            if self._stopping.wait(backoff) or not self.discard_queued():
                return
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _encode(self, encoder: SlotEncoder, slot: Any, written_before: int) -> None:
        encoder.write(slot)
        self.slots_encoded += 1
        self.frames_written = written_before + encoder.frames_written
        self._last_write = time.monotonic()

    @property
    def reported_state(self) -> str:
        """``live`` turns ``stalled`` while a write has been blocked for io_timeout_s: an ingest
        that stopped reading without closing the connection (FFmpeg's RTMP writer has no timeout
        for that; the push resumes if the ingest does)."""
        if self.state == "live" and time.monotonic() - self._last_write > self.io_timeout_s:
            return "stalled"
        return self.state

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "state": self.reported_state,
            "url": redact_url(self.url),
            "connects": self.connects,
            "frames_written": self.frames_written,
            "slots_encoded": self.slots_encoded,
            "live_since": self.live_since,
        }
