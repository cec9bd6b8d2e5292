"""Private portraits (issue 13, point 3): an upload belongs to its uploader, a browser session (an
HttpOnly, SameSite=Strict cookie the server sets) or, with tokens, the token. Nobody else lists it,
opens a session with it (404, as for an id that never was) or pushes it out: ``max_avatars`` is per
owner. The built-in default is everyone's. A session streams with its owner's portrait meanwhile."""

from __future__ import annotations

import pytest
import pytest_asyncio
from yarl import URL

from live_avatar.server.auth import OWNER_COOKIE
from live_avatar.server.config import ServerConfig
from tests.support.inprocess import serve_in_process
from tests.support.live_checks import (
    assert_json_error,
    assert_kept_streaming,
    browser_session,
    lite_engine_of_capacity,
    offer_sdp,
    portrait_jpeg,
    request,
    start_streaming,
    upload_form,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MAX_AVATARS = 2


@pytest.fixture(scope="module")
def lite_engine():
    return lite_engine_of_capacity(4)


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return portrait_jpeg()


def private_config(tokens: list[str] | None = None) -> ServerConfig:
    config = ServerConfig(port=0)
    config.sessions.max_sessions = 4
    config.limits.max_avatars = MAX_AVATARS
    config.limits.uploads_per_minute = 30
    config.auth.tokens = tokens or []
    return config


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(lite_engine):
    async with serve_in_process(private_config(), engine=lite_engine) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alice(server):
    """One browser: its cookie jar keeps the session cookie the server sets."""
    async with browser_session() as http:
        yield http


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bob(server):
    async with browser_session() as http:
        yield http


async def upload(server, http, jpeg: bytes, name: str = "me.jpg") -> str:
    answer = await request(server.url, "POST", "/avatars", http=http, data=upload_form(jpeg, name, "image/jpeg"))
    assert answer.status == 201, answer.body
    return answer.body["avatar_id"]


async def listed(server, http=None, **options) -> list[str]:
    answer = await request(server.url, "GET", "/avatars", http=http, **options)
    assert answer.status == 200, answer.body
    return [a["avatar_id"] for a in answer.body["avatars"]]


def cookie_of(server, http) -> str:
    return http.cookie_jar.filter_cookies(URL(server.url))[OWNER_COOKIE].value


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def alices_portrait(server, alice, jpeg) -> str:
    return await upload(server, alice, jpeg, "alice.jpg")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_peer(server, alice, alices_portrait, speech_with_silence_wav):
    """Alice's browser streams with her own portrait during every test of this module."""
    peer = await start_streaming(
        server.url, speech_with_silence_wav, avatar_id=alices_portrait, http_headers={"Cookie": f"{OWNER_COOKIE}={cookie_of(server, alice)}"}
    )
    peer.portrait = server.state["sessions"].get(peer.session_id).stream.generator.avatar
    assert peer.portrait is not server.state["avatars"].get(None)
    yield peer
    await peer.close()


async def test_the_browser_session_cookie_is_httponly_and_samesite_strict(server, live_peer) -> None:
    async with browser_session() as http:
        page = await request(server.url, "GET", "/", http=http)
        assert page.status == 200 and "Set-Cookie" not in page.headers  # the page itself sets none
        first = await request(server.url, "GET", "/avatars", http=http)
        cookie = first.headers["Set-Cookie"]
        assert cookie.startswith(f"{OWNER_COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        again = await request(server.url, "GET", "/avatars", http=http)
        assert "Set-Cookie" not in again.headers  # kept, not replaced
    # a forged cookie value is not taken as a session: a fresh one is set instead
    answer = await request(server.url, "GET", "/avatars", headers={"Cookie": f"{OWNER_COOKIE}=x"})
    assert "Set-Cookie" in answer.headers


async def test_only_the_uploader_lists_an_upload(server, alice, bob, alices_portrait, live_peer) -> None:
    assert await listed(server, alice) == ["default", alices_portrait]
    assert await listed(server, bob) == ["default"]
    assert await listed(server) == ["default"]  # a client without a session cookie


async def test_someone_elses_portrait_is_as_unknown_as_one_that_never_was(server, bob, alices_portrait, live_peer) -> None:
    sessions = server.state["sessions"]
    theirs = await request(server.url, "POST", "/offer", http=bob, json={"sdp": await offer_sdp(), "type": "offer", "avatar_id": alices_portrait})
    assert_json_error(theirs, 404, "unknown avatar_id")
    never = await request(server.url, "POST", "/offer", http=bob, json={"sdp": await offer_sdp(), "type": "offer", "avatar_id": "0123456789ab"})
    assert theirs.error.replace(alices_portrait, "ID") == never.error.replace("0123456789ab", "ID")
    whip = await request(
        server.url, "POST", "/whip", http=bob, params={"avatar_id": alices_portrait},
        data=(await offer_sdp()).encode(), headers={"Content-Type": "application/sdp"},
    )
    assert_json_error(whip, 404, "unknown avatar_id")
    assert len(sessions) == 1  # nothing was allocated for them
    # the default portrait is everyone's
    answer = await request(server.url, "POST", "/offer", http=bob, json={"sdp": await offer_sdp(), "type": "offer", "avatar_id": "default"})
    assert answer.status == 200, answer.body
    assert (await request(server.url, "DELETE", f"/sessions/{answer.body['session_id']}", http=bob)).status == 200


async def test_eviction_is_per_owner(server, alice, bob, alices_portrait, jpeg, live_peer) -> None:
    bobs = [await upload(server, bob, jpeg, f"bob{i}.jpg") for i in range(MAX_AVATARS + 2)]
    assert await listed(server, bob) == ["default", *bobs[-MAX_AVATARS:]]  # bob's oldest went
    assert await listed(server, alice) == ["default", alices_portrait]  # alice's stayed
    # alice's own uploads push out her least recently used one, and nobody else's
    newer = [await upload(server, alice, jpeg, f"alice{i}.jpg") for i in range(MAX_AVATARS)]
    assert await listed(server, alice) == ["default", *newer]
    assert await listed(server, bob) == ["default", *bobs[-MAX_AVATARS:]]


async def test_with_tokens_the_token_owns_the_upload(lite_engine, jpeg) -> None:
    async with serve_in_process(private_config(["token-a", "token-b"]), engine=lite_engine) as other:
        a, b = {"Authorization": "Bearer token-a"}, {"Authorization": "Bearer token-b"}
        answer = await request(other.url, "POST", "/avatars", headers=a, data=upload_form(jpeg, "a.jpg", "image/jpeg"))
        assert answer.status == 201, answer.body
        assert "Set-Cookie" not in answer.headers
        avatar_id = answer.body["avatar_id"]
        assert await listed(other, headers=a) == ["default", avatar_id]
        assert await listed(other, params={"token": "token-a"}) == ["default", avatar_id]  # the same owner, by ?token=
        assert await listed(other, headers=b) == ["default"]
        refused = await request(other.url, "POST", "/offer", headers=b, json={"sdp": await offer_sdp(), "type": "offer", "avatar_id": avatar_id})
        assert_json_error(refused, 404, "unknown avatar_id")
        mine = await request(other.url, "POST", "/offer", headers=a, json={"sdp": await offer_sdp(), "type": "offer", "avatar_id": avatar_id})
        assert mine.status == 200, mine.body
        assert (await request(other.url, "DELETE", f"/sessions/{mine.body['session_id']}", headers=a)).status == 200


async def test_live_session_kept_streaming_through_all_of_it(server, live_peer) -> None:
    """Runs last: alice's session streamed with her portrait while bob tried to use and evict it
    (and while her own newer uploads pushed it out of the list: a live session keeps its portrait)."""
    await assert_kept_streaming(live_peer)
    session = server.state["sessions"].get(live_peer.session_id)
    assert session.state == "live" and session.stream.generator.avatar is live_peer.portrait
