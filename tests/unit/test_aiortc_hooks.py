"""aiortc_hooks: the audio receivers hold back 1 packet (20 ms) or none instead of aiortc's 4 (80 ms); the hooks know their versions."""

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


def test_prefetch_zero_releases_each_audio_packet_at_once() -> None:
    from aiortc.rtp import RtpPacket

    from live_avatar.server.webrtc.aiortc_hooks import ImmediateAudioJitterBuffer

    buffer = ImmediateAudioJitterBuffer(16)

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(payload_type=111, sequence_number=seq & 0xFFFF, timestamp=seq * 960)
        p._data = bytes([seq & 0xFF])
        return p

    released = [buffer.add(packet(s))[1] for s in (65534, 65535, 0, 0, 65535, 2)]
    # in order and across the wrap: at once; a duplicate and a late one: dropped; a gap: at once
    assert [f.data if f else None for f in released] == [b"\xfe", b"\xff", b"\x00", None, None, b"\x02"]


async def test_prefetch_zero_installs_the_immediate_buffer() -> None:
    from live_avatar.server.webrtc.aiortc_hooks import ImmediateAudioJitterBuffer

    client, server = await answered_pair()
    try:
        assert set_audio_jitter_prefetch(server, 0) == 1
        buffers = {t.kind: t.receiver._RTCRtpReceiver__jitter_buffer for t in server.getTransceivers()}
        assert isinstance(buffers["audio"], ImmediateAudioJitterBuffer)
        assert not isinstance(buffers["video"], ImmediateAudioJitterBuffer)
    finally:
        await client.close()
        await server.close()
