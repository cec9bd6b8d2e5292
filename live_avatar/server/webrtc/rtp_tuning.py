"""Receive-side latency of aiortc audio: its jitter buffer holds 4 packets (80 ms) before it
releases the first, a delay every spoken word pays before the server even sees it. On a live
avatar link (LAN, or a single hop to the server) 1 packet is enough: a packet is released when
the next one arrives (20 ms). aiortc 1.16 has no option for it, so this replaces the audio
receivers' buffer (a private attribute); if aiortc changes, it logs and leaves the default.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer

log = logging.getLogger(__name__)

_ATTR = "_RTCRtpReceiver__jitter_buffer"
AIORTC_AUDIO_CAPACITY = 16  # aiortc's own capacity for audio (a power of two)


def set_audio_jitter_prefetch(pc: RTCPeerConnection, prefetch: int) -> int:
    """Set the prefetch (packets held back) of every audio receiver of ``pc``; returns how many
    receivers were changed. Call after setRemoteDescription, before media flows."""
    if prefetch < 0 or prefetch >= AIORTC_AUDIO_CAPACITY:
        raise ValueError(f"audio jitter prefetch must be 0..{AIORTC_AUDIO_CAPACITY - 1}, got {prefetch}")
    changed = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio":
            continue
        current = getattr(receiver, _ATTR, None)
        if not isinstance(current, JitterBuffer):
            log.warning("aiortc internals changed: cannot tune the audio jitter buffer (default kept)")
            return changed
        setattr(receiver, _ATTR, JitterBuffer(capacity=current.capacity, prefetch=prefetch))
        changed += 1
    return changed
