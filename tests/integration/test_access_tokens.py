"""Access tokens (issue 13, point 1): with ``auth.tokens`` set, every API route answers 401 JSON with
``WWW-Authenticate: Bearer`` to a request without the token or with a wrong one, while a session
opened with the token keeps streaming; the page, its files and /healthz stay open; WHIP takes the
Bearer token on POST and DELETE (RFC 9725); ``?token=`` works where no header can be sent."""

from __future__ import annotations

import pytest
import pytest_asyncio

from live_avatar.server.config import ServerConfig
from tests.support.inprocess import serve_in_process
from tests.support.live_checks import (
    assert_json_error,
    assert_kept_streaming,
    lite_engine_of_capacity,
    offer_sdp,
    portrait_jpeg,
    request,
    start_streaming,
    upload_form,
)
from tests.support.loopback_peer import LoopbackPeer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TOKEN, OTHER_TOKEN = "token-one-0123456789", "token-two"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def lite_engine():
    return lite_engine_of_capacity(4)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(lite_engine):
    config = ServerConfig(port=0)
    config.auth.tokens = [TOKEN, OTHER_TOKEN]
    config.sessions.max_sessions = 4
    async with serve_in_process(config, engine=lite_engine) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_peer(server, speech_with_silence_wav):
    """A session opened with the token that streams during every test of this module."""
    peer = await start_streaming(server.url, speech_with_silence_wav, http_headers=BEARER)
    yield peer
    await peer.close()


def api_requests(session_id: str):
    """(method, path, request options) for every API route, aimed at the live session where one is named."""
    return [
        ("POST", "/offer", {"json": {"sdp": "v=0\r\n", "type": "offer"}}),
        ("POST", "/whip", {"data": b"v=0\r\n", "headers": {"Content-Type": "application/sdp"}}),
        ("DELETE", f"/whip/{session_id}", {}),
        ("PATCH", f"/whip/{session_id}", {}),
        ("GET", "/avatars", {}),
        ("POST", "/avatars", {"data": upload_form(b"\x89PNG not really")}),
        ("GET", f"/sessions/{session_id}/stats", {}),
        ("POST", f"/sessions/{session_id}/interrupt", {}),
        ("DELETE", f"/sessions/{session_id}", {}),
        ("GET", "/metrics", {}),
        ("GET", "/no/such/route", {}),
    ]


def with_headers(options: dict, headers: dict) -> dict:
    return {**options, "headers": {**options.get("headers", {}), **headers}}


async def test_every_api_route_refuses_a_request_without_the_token(server, live_peer) -> None:
    for method, path, options in api_requests(live_peer.session_id):
        answer = await request(server.url, method, path, **options)
        assert_json_error(answer, 401, "access token")
        assert answer.headers["WWW-Authenticate"].startswith("Bearer"), (method, path, answer.headers)
        assert "invalid_token" not in answer.headers["WWW-Authenticate"]
    assert server.state["sessions"].get(live_peer.session_id).state == "live"  # the DELETEs did nothing
    assert len(server.state["sessions"]) == 1


@pytest.mark.parametrize(
    "credentials",
    [
        {"headers": {"Authorization": "Bearer wrong"}},
        {"headers": {"Authorization": f"Bearer {TOKEN[:-1]}"}},  # all but the last character
        {"headers": {"Authorization": f"Bearer {TOKEN}x"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},  # not a Bearer token, and no ?token=
        {"headers": {"Authorization": "Bearer "}},
        {"params": {"token": "wrong"}},
        {"params": {"token": ""}},
    ],
)
async def test_a_wrong_token_is_refused_on_every_api_route(server, live_peer, credentials) -> None:
    for method, path, options in api_requests(live_peer.session_id):
        options = with_headers(options, credentials.get("headers", {}))
        answer = await request(server.url, method, path, params=credentials.get("params"), **options)
        if "Basic" in str(credentials):
            assert_json_error(answer, 401, "access token")
            continue
        assert_json_error(answer, 401, "wrong access token")
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="live-avatar", error="invalid_token"'
    assert server.state["sessions"].get(live_peer.session_id).state == "live"


@pytest.mark.parametrize("path", ["/", "/app.js", "/style.css", "/static/app.js", "/static/index.html", "/healthz"])
async def test_the_page_its_files_and_healthz_stay_open(server, live_peer, path) -> None:
    answer = await request(server.url, "GET", path)
    assert answer.status == 200, (path, answer.body)
    assert "Set-Cookie" not in answer.headers  # the page sets no browser-session cookie


async def test_with_the_token_every_route_works_as_before(server, live_peer) -> None:
    for credentials in ({"headers": BEARER}, {"params": {"token": TOKEN}}, {"headers": {"Authorization": f"Bearer {OTHER_TOKEN}"}}):
        answer = await request(server.url, "GET", "/avatars", **credentials)
        assert answer.status == 200 and answer.body["avatars"][0]["avatar_id"] == "default", answer.body
        answer = await request(server.url, "GET", f"/sessions/{live_peer.session_id}/stats", **credentials)
        assert answer.status == 200 and answer.body["state"] == "live"
        answer = await request(server.url, "GET", "/metrics", **credentials)
        assert answer.status == 200 and "active_sessions" in answer.body
    # past the token, input is checked as before
    answer = await request(server.url, "POST", "/offer", headers=BEARER, json={"sdp": "hello", "type": "offer"})
    assert_json_error(answer, 400, "sdp")
    answer = await request(server.url, "POST", "/sessions/nope/interrupt", headers=BEARER)
    assert_json_error(answer, 404, "unknown session")
    answer = await request(server.url, "POST", f"/sessions/{live_peer.session_id}/interrupt", params={"token": TOKEN})
    assert answer.status == 200 and answer.body["playback_position_s"] > 0


async def test_upload_and_use_a_portrait_with_the_token(server, live_peer) -> None:
    answer = await request(server.url, "POST", "/avatars", headers=BEARER, data=upload_form(portrait_jpeg(), "me.jpg", "image/jpeg"))
    assert answer.status == 201, answer.body
    assert "Set-Cookie" not in answer.headers  # with tokens the token is the owner: no cookie
    avatar_id = answer.body["avatar_id"]
    listing = await request(server.url, "GET", "/avatars", params={"token": TOKEN})
    assert avatar_id in [a["avatar_id"] for a in listing.body["avatars"]]
    answer = await request(server.url, "POST", "/offer", headers=BEARER, json={"sdp": await offer_sdp(), "type": "offer", "avatar_id": avatar_id})
    assert answer.status == 200 and answer.body["type"] == "answer", answer.body
    closed = await request(server.url, "DELETE", f"/sessions/{answer.body['session_id']}", headers=BEARER)
    assert closed.status == 200 and closed.body["state"] == "closed"


async def test_whip_takes_the_bearer_token_on_post_and_delete(server, live_peer, speech_with_silence_wav) -> None:
    refused = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None)
    try:
        with pytest.raises(RuntimeError, match="401"):
            await refused.connect_whip(server.url)
    finally:
        await refused.close()
    peer = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None, http_headers=BEARER)
    try:
        session_id = await peer.connect_whip(server.url)
        assert peer.location == f"/whip/{session_id}"
        assert server.state["sessions"].get(session_id) is not None
        answer = await request(server.url, "DELETE", peer.location)
        assert_json_error(answer, 401)
        assert server.state["sessions"].get(session_id) is not None  # still there
        assert await peer.delete_session() == 200
        assert server.state["sessions"].get(session_id) is None
    finally:
        await peer.close()


async def test_metrics_open_when_configured(lite_engine) -> None:
    config = ServerConfig(port=0)
    config.auth.tokens = [TOKEN]
    config.auth.metrics_open = True
    async with serve_in_process(config, engine=lite_engine) as other:
        answer = await request(other.url, "GET", "/metrics")
        assert answer.status == 200 and "active_sessions" in answer.body
        assert_json_error(await request(other.url, "GET", "/avatars"), 401)


async def test_live_session_kept_streaming_through_all_of_it(server, live_peer) -> None:
    """Runs last: the session opened with the token never stalled while refused requests arrived."""
    await assert_kept_streaming(live_peer)
    answer = await request(server.url, "GET", f"/sessions/{live_peer.session_id}/stats", headers=BEARER)
    assert answer.status == 200 and answer.body["state"] == "live"
    assert await live_peer.delete_session() == 200
    assert len(server.state["sessions"]) == 0
