"""aiortc_hooks: the audio receivers hold back 1 packet (20 ms) instead of aiortc's 4 (80 ms); the hooks know their versions."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from live_avatar.server.webrtc.aiortc_hooks import set_audio_jitter_prefetch
from live_avatar.server.webrtc.ice import rtc_configuration


async def answered_pair() -> tuple[RTCPeerConnection, RTCPeerConnection]:
    client, server = RTCPeerConnection(rtc_configuration([])), RTCPeerConnection(rtc_configuration([]))
    client.addTransceiver("audio", direction="sendrecv")
    client.addTransceiver("video", direction="recvonly")
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(RTCSessionDescription(client.localDescription.sdp, "offer"))
    return client, server


def prefetches(pc: RTCPeerConnection) -> dict[str, int]:
    return {t.kind: t.receiver._RTCRtpReceiver__jitter_buffer._prefetch for t in pc.getTransceivers()}


async def test_audio_prefetch_is_lowered_and_video_untouched() -> None:
    client, server = await answered_pair()
    try:
        before = prefetches(server)
        assert before["audio"] == 4  # aiortc's default: the latency this module removes
        assert set_audio_jitter_prefetch(server, 1) == 1
        after = prefetches(server)
        assert after["audio"] == 1 and after["video"] == before["video"]
    finally:
        await client.close()
        await server.close()


async def test_out_of_range_prefetch_is_refused() -> None:
    client, server = await answered_pair()
    try:
        with pytest.raises(ValueError):
            set_audio_jitter_prefetch(server, 16)
    finally:
        await client.close()
        await server.close()


def test_installed_aiortc_is_one_the_hooks_were_checked_with() -> None:
    """An aiortc/aioice upgrade must come with a fresh look at aiortc_hooks.py (then widen TESTED_VERSIONS)."""
    from live_avatar.server.webrtc.aiortc_hooks import untested_versions

    assert untested_versions() == []
