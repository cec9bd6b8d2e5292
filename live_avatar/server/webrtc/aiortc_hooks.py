"""Every hook into aiortc/aioice internals, in one place, checked against the versions they were written for.

aiortc 1.16 / aioice 0.13 have no options for two things a live avatar server needs:

- **Host candidates.** aioice gathers host candidates from every interface but loopback
  (``aioice.ice.get_host_addresses``). A server bound to 127.0.0.1 must offer exactly 127.0.0.1. We
  wrap that module-level function once with a version that honours a context variable;
  ``pinned_host_addresses`` sets it around the call that gathers (``setLocalDescription``). The pin is
  scoped to that call's task context, so other connections in the process are unaffected.
- **Audio jitter buffer.** aiortc's audio receiver holds 4 packets (80 ms) before it releases the first,
  a delay every spoken word pays before the server sees it. Even with a prefetch of 0 its buffer
  releases a frame only when the next packet arrives (20 ms). An opus RTP packet is one whole frame
  (RFC 7587), so prefetch 0 installs ``ImmediateAudioJitterBuffer``, which releases each at once.
  ``set_audio_jitter_prefetch`` replaces the receivers' buffer (a private attribute).

Both check that the internals look as expected and otherwise log once and keep aiortc's default, so
an aiortc upgrade degrades latency or candidate choice, never breaks a session. ``TESTED_VERSIONS``
says what they were checked against; a newer version logs a warning at first use.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from importlib.metadata import version
from typing import Iterator

import aioice.ice
from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame

log = logging.getLogger(__name__)

# package -> (first, last) major.minor the hooks were checked with
TESTED_VERSIONS = {"aiortc": ((1, 14), (1, 16)), "aioice": ((0, 9), (0, 13))}
_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
AIORTC_AUDIO_CAPACITY = 16  # aiortc's own capacity for audio (a power of two)

_checked = False
_pinned: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("pinned_host_addresses", default=None)
_original_get_host_addresses = aioice.ice.get_host_addresses


def untested_versions() -> list[str]:
    """'package X.Y' for each hooked package outside the versions the hooks were checked with."""
    found = []
    for package, (first, last) in TESTED_VERSIONS.items():
        installed = tuple(int(p) for p in version(package).split(".")[:2] if p.isdigit())
        if not first <= installed <= last:
            found.append(f"{package} {version(package)}")
    return found


def _check_versions_once() -> None:
    global _checked
    if not _checked:
        _checked = True
        untested = untested_versions()
        if untested:
            log.warning("aiortc hooks were checked with %s; installed: %s (the hooks verify what they touch and fall "
                        "back to aiortc's defaults)", TESTED_VERSIONS, ", ".join(untested))


# ------------------------------------------------------------------------------ host candidates


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    pinned = _pinned.get()
    if pinned is None:
        return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return list(pinned)


@contextlib.contextmanager
def pinned_host_addresses(addresses: list[str] | None) -> Iterator[None]:
    """Within this block, ICE gathering offers exactly ``addresses`` (None: aioice's default)."""
    _check_versions_once()
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses
    token = _pinned.set(list(addresses) if addresses is not None else None)
    try:
        yield
    finally:
        _pinned.reset(token)


# ------------------------------------------------------------------------------ audio jitter buffer


class ImmediateAudioJitterBuffer(JitterBuffer):
    """Releases every audio packet as it arrives (one packet, one opus frame); a duplicate or a
    packet older than one already released is dropped (the decoder conceals the gap)."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity=capacity, prefetch=0)
        self._last_sequence: int | None = None

    def add(self, packet) -> tuple[bool, JitterFrame | None]:
        last = self._last_sequence
        if last is not None:
            ahead = (packet.sequence_number - last) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                return False, None
        self._last_sequence = packet.sequence_number
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)


def set_audio_jitter_prefetch(pc: RTCPeerConnection, prefetch: int) -> int:
    """Set the prefetch (packets held back) of every audio receiver of ``pc``; returns how many
    receivers were changed. 0: release each packet at once (``ImmediateAudioJitterBuffer``).
    Call after setRemoteDescription, before media flows."""
    if prefetch < 0 or prefetch >= AIORTC_AUDIO_CAPACITY:
        raise ValueError(f"audio jitter prefetch must be 0..{AIORTC_AUDIO_CAPACITY - 1}, got {prefetch}")
    _check_versions_once()
    changed = 0
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        current = getattr(transceiver.receiver, _JITTER_ATTR, None)
        if not isinstance(current, JitterBuffer):
            log.warning("aiortc internals changed: cannot tune the audio jitter buffer (default kept)")
            return changed
        buffer = (ImmediateAudioJitterBuffer(current.capacity) if prefetch == 0
                  else JitterBuffer(capacity=current.capacity, prefetch=prefetch))
        setattr(transceiver.receiver, _JITTER_ATTR, buffer)
        changed += 1
    return changed
