"""ICE: host candidates only on the configured address, no STUN unless configured."""

from __future__ import annotations

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from live_avatar.server.config import ServerConfig
from live_avatar.server.webrtc.aiortc_hooks import pinned_host_addresses
from live_avatar.server.webrtc.ice import rtc_configuration


def candidate_lines(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


async def test_pinned_offer_has_only_the_loopback_host_candidate() -> None:
    pc = RTCPeerConnection(rtc_configuration([]))
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="recvonly")
        with pinned_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        lines = candidate_lines(pc.localDescription.sdp)
        assert lines, "no candidates at all"
        for line in lines:
            assert " 127.0.0.1 " in line and " typ host" in line, line
    finally:
        await pc.close()


def test_pin_is_scoped_to_the_block() -> None:
    default = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    with pinned_host_addresses(["127.0.0.1"]):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == default
    assert "127.0.0.1" not in default  # aioice's own behaviour, which the pin exists to change


def test_no_public_stun_unless_configured() -> None:
    assert rtc_configuration([]).iceServers == []  # [] (not None): aiortc adds Google STUN for None
    configured = rtc_configuration([{"urls": "stun:stun.example.org:3478"}])
    assert [s.urls for s in configured.iceServers] == ["stun:stun.example.org:3478"]
    with pytest.raises(ValueError):
        rtc_configuration([{"username": "x"}])


@pytest.mark.parametrize(
    "host,explicit,expected",
    [
        ("127.0.0.1", [], ["127.0.0.1"]),
        ("localhost", [], ["127.0.0.1"]),
        ("192.0.2.7", [], ["192.0.2.7"]),
        ("0.0.0.0", [], None),  # every non-loopback interface (aioice default)
        ("0.0.0.0", ["198.51.100.1"], ["198.51.100.1"]),
    ],
)
def test_host_candidates_follow_the_listen_address(host, explicit, expected) -> None:
    config = ServerConfig(host=host)
    config.webrtc.ice_host_addresses = explicit
    assert config.ice_host_addresses() == expected
