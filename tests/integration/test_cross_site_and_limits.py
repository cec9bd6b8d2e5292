"""Cross-site requests and slot abuse (issue 13, point 2), while a session streams: POST /offer only
as JSON (415), a foreign ``Origin`` refused (403) and CORS headers only for allowed origins, a
session whose ICE never connects closed after ``sessions.connect_timeout_s``, and per-client
limits (sessions at once, uploads a minute: 429)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
import pytest_asyncio

from live_avatar.server.config import ServerConfig
from tests.support.inprocess import serve_in_process
from tests.support.live_checks import (
    assert_json_error,
    assert_kept_streaming,
    lite_engine_of_capacity,
    offer_sdp,
    request,
    start_streaming,
    upload_form,
)
from tests.support.loopback_peer import LoopbackPeer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ALLOWED = "http://app.allowed.example:3000"
FOREIGN = "https://evil.example"
CONNECT_TIMEOUT_S = 1.5
UPLOADS_PER_MINUTE = 3


@pytest.fixture(scope="module")
def lite_engine():
    return lite_engine_of_capacity(4)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(lite_engine):
    config = ServerConfig(port=0)
    config.sessions.max_sessions = 4
    config.sessions.idle_timeout_s = 60.0  # so that only the connect timeout can end a silent session
    config.sessions.connect_timeout_s = CONNECT_TIMEOUT_S
    config.limits.max_sessions_per_client = 2
    config.limits.uploads_per_minute = UPLOADS_PER_MINUTE
    config.cors.allow_origins = [ALLOWED]
    async with serve_in_process(config, engine=lite_engine) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_peer(server, speech_with_silence_wav):
    peer = await start_streaming(server.url, speech_with_silence_wav)
    yield peer
    await peer.close()


def other_address() -> aiohttp.ClientSession:
    """A client on another address (127.0.0.2: still loopback, another client to the server)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))


# -- POST /offer is JSON only ------------------------------------------------------------------
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
async def test_offer_must_be_sent_as_json(server, live_peer, content_type) -> None:
    body = json.dumps({"sdp": await offer_sdp(), "type": "offer"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    answer = await request(server.url, "POST", "/offer", data=body, headers=headers)
    assert_json_error(answer, 415, "application/json")
    assert len(server.state["sessions"]) == 1  # nothing was allocated


# -- Origin ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "origin",
    [FOREIGN, "null", "http://localhost:{port}", "https://127.0.0.1:{port}", "http://127.0.0.1:1", ALLOWED + "1", "not an origin"],
)
async def test_a_foreign_origin_is_refused_on_every_route(server, live_peer, origin) -> None:
    origin = origin.format(port=server.url.rsplit(":", 1)[1])
    headers = {"Origin": origin}
    sid = live_peer.session_id
    for method, path, options in [
        ("POST", "/offer", {"json": {"sdp": await offer_sdp(), "type": "offer"}}),
        ("POST", "/avatars", {"data": upload_form(b"\x89PNG")}),
        ("GET", "/avatars", {}),
        ("GET", f"/sessions/{sid}/stats", {}),
        ("POST", f"/sessions/{sid}/interrupt", {}),
        ("DELETE", f"/sessions/{sid}", {}),
        ("DELETE", f"/whip/{sid}", {}),
        ("GET", "/", {}),
        ("OPTIONS", "/offer", {"headers": {"Access-Control-Request-Method": "POST"}}),
    ]:
        answer = await request(server.url, method, path, **{**options, "headers": {**options.get("headers", {}), **headers}})
        assert_json_error(answer, 403, "cross-origin")
        assert "Access-Control-Allow-Origin" not in answer.headers
    assert len(server.state["sessions"]) == 1 and server.state["sessions"].get(sid).state == "live"


async def test_the_servers_own_origin_passes_without_cors_headers(server, live_peer) -> None:
    own = {"Origin": server.url}
    answer = await request(server.url, "GET", "/avatars", headers=own)
    assert answer.status == 200 and "Access-Control-Allow-Origin" not in answer.headers
    answer = await request(server.url, "POST", "/offer", headers=own, json={"sdp": "hello", "type": "offer"})
    assert_json_error(answer, 400, "sdp")  # past the Origin check, the offer itself is judged


async def test_an_allowed_origin_gets_cors_headers_and_preflight_answers(server, live_peer) -> None:
    answer = await request(server.url, "GET", "/avatars", headers={"Origin": ALLOWED})
    assert answer.status == 200 and answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Location" in answer.headers["Access-Control-Expose-Headers"]
    assert "Origin" in answer.headers.getall("Vary")

    for path, method in (("/offer", "POST"), (f"/whip/{live_peer.session_id}", "DELETE"), ("/avatars", "POST")):
        preflight = await request(
            server.url,
            "OPTIONS",
            path,
            headers={"Origin": ALLOWED, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": "authorization, content-type"},
        )
        assert preflight.status == 204, (path, preflight.body)
        assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert method in preflight.headers["Access-Control-Allow-Methods"]
        assert {"Authorization", "Content-Type"} <= {h.strip() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}

    # error answers carry the headers too (else the allowed page could not read the reason)
    answer = await request(server.url, "GET", "/sessions/nope/stats", headers={"Origin": ALLOWED})
    assert_json_error(answer, 404, "unknown session")
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    answer = await request(server.url, "POST", "/offer", headers={"Origin": ALLOWED}, data=b"{}")
    assert_json_error(answer, 415)
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED

    answer = await request(server.url, "GET", "/avatars")  # no Origin: no CORS headers
    assert answer.status == 200 and "Access-Control-Allow-Origin" not in answer.headers


# -- a session that never connects -------------------------------------------------------------
async def test_a_session_whose_ice_never_connects_is_closed_and_frees_its_place(server, live_peer) -> None:
    sessions = server.state["sessions"]
    started = time.monotonic()
    answer = await request(server.url, "POST", "/offer", json={"sdp": await offer_sdp(), "type": "offer"})  # the peer is gone
    assert answer.status == 200, answer.body
    session_id = answer.body["session_id"]
    session = sessions.get(session_id)
    assert session is not None and len(sessions) == 2
    while sessions.get(session_id) is not None and time.monotonic() - started < CONNECT_TIMEOUT_S + 5:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    assert session.closed and "ICE did not connect" in session.close_reason, session.close_reason
    assert CONNECT_TIMEOUT_S - 0.2 <= elapsed <= CONNECT_TIMEOUT_S + 3, elapsed
    assert session.stream.state == "closed"  # the engine session was released too
    assert len(sessions) == 1 and sessions.get(live_peer.session_id).state == "live"



async def test_a_session_whose_dtls_never_completes_is_closed_with_that_reason(
    server, live_peer, speech_with_silence_wav
) -> None:
    """ICE connects, the DTLS handshake never does (as with a cryptography release that pyOpenSSL
    refuses, which aiortc reports at debug level only): the reason names DTLS, not silence."""
    sessions = server.state["sessions"]
    peer = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None)
    apply_answer = peer._apply_answer

    async def apply_answer_without_dtls(sdp: str) -> None:
        async def never(*_args) -> None:
            await asyncio.Event().wait()

        for transceiver in peer.pc.getTransceivers():  # this peer's transports only, not the server's
            transceiver.receiver.transport.start = never
        await apply_answer(sdp)

    peer._apply_answer = apply_answer_without_dtls
    try:
        started = time.monotonic()
        session_id = await peer.connect_offer(server.url)
        session = sessions.get(session_id)
        assert session is not None
        while sessions.get(session_id) is not None and time.monotonic() - started < CONNECT_TIMEOUT_S + 5:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        assert session.closed and "DTLS handshake did not complete" in session.close_reason, session.close_reason
        assert "ICE connected" in session.close_reason
        assert CONNECT_TIMEOUT_S - 0.2 <= elapsed <= CONNECT_TIMEOUT_S + 3, elapsed
        assert not peer.video_frames
        assert len(sessions) == 1 and sessions.get(live_peer.session_id).state == "live"
    finally:
        await peer.close()

# -- per-client limits -------------------------------------------------------------------------
async def test_sessions_per_client_are_limited(server, live_peer, speech_with_silence_wav) -> None:
    sessions = server.state["sessions"]
    second = await start_streaming(server.url, speech_with_silence_wav)  # this client's second session
    try:
        assert len(sessions) == 2
        answer = await request(server.url, "POST", "/offer", json={"sdp": await offer_sdp(), "type": "offer"})
        assert_json_error(answer, 429, "max_sessions_per_client")
        assert answer.body["reason"] == "sessions_per_client"
        answer = await request(server.url, "POST", "/whip", data=(await offer_sdp()).encode(), headers={"Content-Type": "application/sdp"})
        assert_json_error(answer, 429)
        assert len(sessions) == 2

        # another client (another address) still gets in: the server itself is not full
        async with other_address() as http:
            answer = await request(server.url, "POST", "/offer", http=http, json={"sdp": await offer_sdp(), "type": "offer"})
            assert answer.status == 200, answer.body
            assert sessions.get(answer.body["session_id"]).client == "address:127.0.0.2"
            closed = await request(server.url, "DELETE", f"/sessions/{answer.body['session_id']}", http=http)
            assert closed.status == 200
    finally:
        await second.delete_session()
        await second.close()
    assert len(sessions) == 1
    # with the second one gone, this client may open another
    answer = await request(server.url, "POST", "/offer", json={"sdp": await offer_sdp(), "type": "offer"})
    assert answer.status == 200, answer.body
    await request(server.url, "DELETE", f"/sessions/{answer.body['session_id']}")
    assert len(sessions) == 1


async def test_uploads_per_minute_are_limited_with_retry_after(server, live_peer) -> None:
    for _ in range(UPLOADS_PER_MINUTE):  # cheap refused uploads count too: each one costs decoding
        answer = await request(server.url, "POST", "/avatars", data=upload_form(b"not an image" * 10, "x.txt", "text/plain"))
        assert answer.status == 422, answer.body
    answer = await request(server.url, "POST", "/avatars", data=upload_form(b"not an image" * 10, "x.txt", "text/plain"))
    assert_json_error(answer, 429, "uploads_per_minute")
    retry_after = int(answer.headers["Retry-After"])
    assert 1 <= retry_after <= 60 and answer.body["retry_after_s"] == retry_after
    async with other_address() as http:  # another client has its own allowance
        answer = await request(server.url, "POST", "/avatars", http=http, data=upload_form(b"not an image" * 10, "x.txt", "text/plain"))
        assert answer.status == 422, answer.body


async def test_live_session_kept_streaming_through_all_of_it(server, live_peer) -> None:
    """Runs last: the session that was live during every refused request never stalled."""
    await assert_kept_streaming(live_peer)
    answer = await request(server.url, "GET", f"/sessions/{live_peer.session_id}/stats")
    assert answer.status == 200 and answer.body["state"] == "live"
