"""Which ICE servers a peer connection uses.

aiortc adds Google's public STUN server when no ``iceServers`` are given; a server must contact no
outside server unless configured to. Host-candidate pinning is an aiortc internals hook and lives
with the others in ``aiortc_hooks``.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCConfiguration, RTCIceServer

__all__ = ["rtc_configuration"]


def rtc_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """RTCConfiguration with exactly the configured STUN/TURN servers (none: no outside traffic).

    An empty list is passed through explicitly: aiortc only falls back to its public STUN default
    when ``iceServers`` is None.
    """
    servers = []
    for entry in ice_servers:
        if not isinstance(entry, dict) or "urls" not in entry:
            raise ValueError(f"each ICE server needs 'urls', e.g. {{urls: 'stun:stun.example.org:3478'}}; got {entry!r}")
        servers.append(
            RTCIceServer(urls=entry["urls"], username=entry.get("username"), credential=entry.get("credential"))
        )
    return RTCConfiguration(iceServers=servers)
