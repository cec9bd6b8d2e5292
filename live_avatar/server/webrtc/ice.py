"""Which host candidates a peer connection offers, and which ICE servers it uses.

aioice gathers host candidates from every interface but loopback (``aioice.ice.get_host_addresses``)
and aiortc adds Google's public STUN server when no ``iceServers`` are given. A live server bound
to 127.0.0.1 must offer exactly 127.0.0.1 and contact no outside server. aiortc 1.16 has no option
for the host addresses, so the one hook is that module-level function: we wrap it once with a
version that honours a context variable, and ``pinned_host_addresses`` sets that variable around
the call that gathers (``setLocalDescription``). The pin is scoped to that call's task context, so
other connections in the same process (another session, a test peer) are unaffected.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

_pinned: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("pinned_host_addresses", default=None)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    pinned = _pinned.get()
    if pinned is None:
        return _original_get_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return list(pinned)


def _install() -> None:
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def pinned_host_addresses(addresses: list[str] | None) -> Iterator[None]:
    """Within this block, ICE gathering offers exactly ``addresses`` (None: aioice's default)."""
    _install()
    token = _pinned.set(list(addresses) if addresses is not None else None)
    try:
        yield
    finally:
        _pinned.reset(token)


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
