"""Bad input gets a clear 4xx with JSON {"error": ...} or a clean session end, and never harms a
session that is live at the same time (DESIGN.md §4, point 7 of "Live end to end on a CPU")."""

from __future__ import annotations

import asyncio
import time

import cv2
import numpy as np
import pytest
import pytest_asyncio

from live_avatar.server.config import ServerConfig
from tests.support import live_checks
from tests.support.inprocess import serve_in_process
from tests.support.loopback_peer import LoopbackPeer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

UPLOAD_LIMIT = 300_000


@pytest.fixture(scope="module")
def lite_engine():
    from live_avatar.core.engines import load_engine

    engine = load_engine("lite")
    engine.capacity = 4  # fixed, so that max_sessions=2 is the limit under test (not a CPU measurement)
    return engine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(lite_engine):
    config = ServerConfig(port=0)
    config.sessions.max_sessions = 2
    config.sessions.idle_timeout_s = 2.0
    config.limits.max_upload_bytes = UPLOAD_LIMIT
    config.limits.max_sdp_bytes = 20_000
    async with serve_in_process(config, engine=lite_engine) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live_peer(server, speech_with_silence_wav):
    """A session that streams during every test of this module."""
    peer = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None)
    await peer.connect_offer(server.url)
    await asyncio.wait_for(peer.connected.wait(), 20)
    deadline = time.monotonic() + 20
    while len(peer.video_frames) < 10 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(peer.video_frames) >= 10, "the live session never started streaming"
    # a second consumer of the same session that never reads (a frozen viewer page): it must only
    # lose its own slots, never slow the peer or the generator
    peer.stalled_viewer = server.state["sessions"].get(peer.session_id).fanout.subscribe("stalled-viewer")
    yield peer
    await peer.close()


async def request(server, method: str, path: str, **kwargs) -> tuple[int, dict]:
    """(status, JSON body); ``http=`` (a session with a cookie jar) makes several one browser's."""
    answer = await live_checks.request(server.url, method, path, **kwargs)
    assert answer.headers.get("Content-Type", "").startswith("application/json"), (answer.status, answer.body)
    return answer.status, answer.body


def assert_error(status: int, body: dict, expected_status: int, *words: str) -> None:
    assert status == expected_status, (status, body)
    assert isinstance(body.get("error"), str) and body["error"], body
    for word in words:
        assert word.lower() in body["error"].lower(), (word, body["error"])


client_offer_sdp = live_checks.offer_sdp


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


upload_form = live_checks.upload_form


# -- signaling ---------------------------------------------------------------------------------
async def test_malformed_sdp(server, live_peer) -> None:
    status, body = await request(server, "POST", "/offer", json={"sdp": "hello, I am not SDP", "type": "offer"})
    assert_error(status, body, 400, "sdp")
    status, body = await request(server, "POST", "/offer", json={"sdp": "v=0\r\nm=audio 9 nonsense\r\n", "type": "offer"})
    assert_error(status, body, 400, "sdp")


async def test_offer_without_dtls_fingerprint_or_ice_credentials(server, live_peer) -> None:
    sdp = await client_offer_sdp()
    for broken in (sdp.replace("a=fingerprint:", "a=x-fingerprint:"), sdp.replace("a=ice-ufrag:", "a=x-ufrag:")):
        status, body = await request(server, "POST", "/offer", json={"sdp": broken, "type": "offer"})
        assert_error(status, body, 400, "sdp", "malformed")
    assert len(server.state["sessions"]) == 1  # nothing was allocated


async def test_offer_body_not_json(server, live_peer) -> None:
    status, body = await request(server, "POST", "/offer", data=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(status, body, 400, "json")


async def test_oversized_sdp(server, live_peer) -> None:
    sdp = await client_offer_sdp()
    huge = sdp + "a=x-padding:" + "z" * 30_000 + "\r\n"
    status, body = await request(server, "POST", "/offer", json={"sdp": huge, "type": "offer"})
    assert_error(status, body, 413, "too large")
    status, body = await request(server, "POST", "/whip", data=huge.encode(), headers={"Content-Type": "application/sdp"})
    assert_error(status, body, 413, "too large")


async def test_offer_without_audio(server, live_peer) -> None:
    sdp = await client_offer_sdp(audio=False)
    status, body = await request(server, "POST", "/offer", json={"sdp": sdp, "type": "offer"})
    assert_error(status, body, 400, "no audio")


async def test_whip_needs_application_sdp(server, live_peer) -> None:
    sdp = await client_offer_sdp()
    status, body = await request(server, "POST", "/whip", data=sdp.encode(), headers={"Content-Type": "text/plain"})
    assert_error(status, body, 415, "application/sdp")


async def test_unknown_avatar_id(server, live_peer) -> None:
    sdp = await client_offer_sdp()
    status, body = await request(server, "POST", "/offer", json={"sdp": sdp, "type": "offer", "avatar_id": "nope"})
    assert_error(status, body, 404, "avatar")
    assert len(server.state["sessions"]) == 1  # nothing was allocated for the refused offer


# -- uploads -----------------------------------------------------------------------------------
async def test_upload_that_is_not_an_image(server, live_peer) -> None:
    status, body = await request(server, "POST", "/avatars", data=upload_form(b"just some text\n" * 10, "notes.txt", "text/plain"))
    assert_error(status, body, 422, "image")


async def test_upload_too_large(server, live_peer) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), np.uint8)  # PNG of noise: ~480 kB
    data = png(noise)
    assert len(data) > UPLOAD_LIMIT
    status, body = await request(server, "POST", "/avatars", data=upload_form(data))
    assert_error(status, body, 413, "too large")


async def test_upload_without_a_face(server, live_peer) -> None:
    x = np.linspace(0, 255, 320, dtype=np.float32)
    gradient = np.stack([np.tile(x, (240, 1))] * 3, axis=2).astype(np.uint8)
    status, body = await request(server, "POST", "/avatars", data=upload_form(png(gradient)))
    assert_error(status, body, 422, "face")


async def test_upload_not_multipart(server, live_peer) -> None:
    status, body = await request(server, "POST", "/avatars", data=b"\x89PNG", headers={"Content-Type": "image/png"})
    assert_error(status, body, 415, "multipart")


async def test_upload_of_a_portrait_works_and_can_be_used(server, live_peer) -> None:
    from live_avatar.core.portraits import default_portrait

    portrait = cv2.cvtColor(default_portrait(), cv2.COLOR_RGB2BGR)
    ok, jpeg = cv2.imencode(".jpg", portrait, [cv2.IMWRITE_JPEG_QUALITY, 85])
    async with live_checks.browser_session() as browser:  # an upload is its uploader's
        status, body = await request(server, "POST", "/avatars", http=browser, data=upload_form(jpeg.tobytes(), "astronaut.jpg", "image/jpeg"))
        assert status == 201, body
        status, listing = await request(server, "GET", "/avatars", http=browser)
        assert body["avatar_id"] in [a["avatar_id"] for a in listing["avatars"]]
        # ... and a session can be opened with it (then closed again: the module's limits stay as they were)
        sdp = await client_offer_sdp()
        status, answer = await request(server, "POST", "/offer", http=browser, json={"sdp": sdp, "type": "offer", "avatar_id": body["avatar_id"]})
    assert status == 200 and answer["type"] == "answer", answer
    session = server.state["sessions"].get(answer["session_id"])
    assert session is not None and session.stream.generator.avatar is not server.state["avatars"].get(None)
    status, closed = await request(server, "DELETE", f"/sessions/{answer['session_id']}")
    assert status == 200 and closed["state"] == "closed"
    assert len(server.state["sessions"]) == 1


# -- sessions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/sessions/nope/stats"),
        ("POST", "/sessions/nope/interrupt"),
        ("DELETE", "/sessions/nope"),
        ("DELETE", "/whip/nope"),
    ],
)
async def test_unknown_session_id(server, live_peer, method: str, path: str) -> None:
    status, body = await request(server, method, path)
    assert_error(status, body, 404, "unknown session")


async def test_unknown_route_is_json_404(server, live_peer) -> None:
    status, body = await request(server, "GET", "/no/such/page")
    assert_error(status, body, 404)


async def test_vanished_client_is_cleaned_up_and_capacity_is_enforced(server, live_peer, speech_with_silence_wav) -> None:
    sessions = server.state["sessions"]
    peer = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None)
    try:
        session_id = await peer.connect_offer(server.url)
        await asyncio.wait_for(peer.connected.wait(), 20)
        assert len(sessions) == 2

        # the server is full (max_sessions=2): a third peer is refused with a reason
        status, body = await request(server, "POST", "/offer", json={"sdp": await client_offer_sdp(), "type": "offer"})
        assert_error(status, body, 503, "full")
        assert body.get("reason") == "capacity"

        # the second client disappears without a word: its session ends and frees its place
        session = sessions.get(session_id)
        await peer.vanish()
        deadline = time.monotonic() + 10
        while sessions.get(session_id) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert sessions.get(session_id) is None, "the vanished client's session was not closed"
        assert session.closed and session.close_reason
        assert session.stream.state == "closed"  # the engine session was released too
        assert len(sessions) == 1
    finally:
        await peer.close()


async def test_interrupt_answers_playback_position(server, live_peer) -> None:
    status, body = await request(server, "POST", f"/sessions/{live_peer.session_id}/interrupt")
    assert status == 200, body
    assert body["playback_position_s"] > 0


async def test_live_session_kept_streaming_through_all_of_it(server, live_peer) -> None:
    """Runs last: the session that was live during every bad request never stalled."""
    before = len(live_peer.video_frames)
    await asyncio.sleep(1.0)
    assert len(live_peer.video_frames) - before >= 15  # still ~25 fps (loose)
    arrivals = np.array([f.arrival for f in live_peer.video_frames])
    assert np.diff(arrivals).max() < 1.0, "the live session stalled for a second or more"
    status, stats = await request(server, "GET", f"/sessions/{live_peer.session_id}/stats")
    assert status == 200 and stats["state"] == "live"
    stalled = stats["queues"]["consumers"]["stalled-viewer"]
    assert stalled["dropped"] > 25 and stalled["depth"] <= 4  # bounded, lost its own slots only


async def test_delete_session_ends_it(server, live_peer) -> None:
    status, body = await request(server, "DELETE", f"/sessions/{live_peer.session_id}")
    assert status == 200 and body["state"] == "closed"
    status, body = await request(server, "GET", f"/sessions/{live_peer.session_id}/stats")
    assert_error(status, body, 404)
    assert len(server.state["sessions"]) == 0
