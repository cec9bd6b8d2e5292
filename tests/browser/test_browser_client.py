"""The browser client (client_demo/) against the real server, in headless Chromium with a fake microphone.

Checks what a user sees: the page connects, the avatar video plays at the server's size and frame
rate, the overlay shows a measured first-frame latency, errors from the server are shown clearly,
and Disconnect ends the session on the server.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser

CONNECT_TIMEOUT_MS = 45_000
MEASURE_WINDOW_S = 4.0
MIN_FRAMES_IN_WINDOW = 25  # ~6 fps: proves steady decoding on a loaded 2-core CI box, not real-time


def _frames(page) -> dict:
    return page.evaluate(
        """() => {
            const v = document.getElementById('video');
            const q = v.getVideoPlaybackQuality();
            return {presented: window.avatarClient.framesPresented, total: q.totalVideoFrames,
                    width: v.videoWidth, height: v.videoHeight, t: performance.now()};
        }"""
    )


def _connect(page, server_url: str) -> None:
    page.goto(server_url + "/")
    page.click("#connect")
    page.wait_for_function(
        "() => window.avatarClient.connected && window.avatarClient.framesPresented > 0",
        timeout=CONNECT_TIMEOUT_MS,
    )


def test_page_streams_avatar_video_and_shows_latency(chromium_page, server_url, http, tmp_path):
    page = chromium_page
    _connect(page, server_url)
    session_id = page.evaluate("window.avatarClient.sessionId")
    assert session_id, "the page did not keep the session id from /offer"

    before = _frames(page)
    page.wait_for_timeout(MEASURE_WINDOW_S * 1000)
    after = _frames(page)
    decoded = after["total"] - before["total"]
    assert decoded >= MIN_FRAMES_IN_WINDOW, (
        f"only {decoded} video frames in {MEASURE_WINDOW_S} s; console: {page.console_log[-10:]}"
    )
    assert after["presented"] > before["presented"], "requestVideoFrameCallback saw no new frames"

    status, stats = http("GET", f"{server_url}/sessions/{session_id}/stats")
    assert status == 200, stats
    # the fake microphone's speech reached the avatar: the server saw an onset and lips moved for it
    assert stats["speech_to_lips_latency_ms"]["count"] >= 1, stats
    width, height = _server_frame_size()
    assert (after["width"], after["height"]) == (width, height)

    # The overlay refreshes once a second from the server's stats; the first-frame latency must be
    # the server's measured number (not the page's own fallback, which is marked "(page)").
    page.wait_for_function(
        "() => /^\\d+ ms$/.test(document.getElementById('stat-first-frame').textContent.trim())",
        timeout=5000,
    )
    shown = page.text_content("#stat-first-frame").strip()
    assert 0 < int(shown.split()[0]) < 10_000
    fps_text = page.text_content("#stat-fps")
    assert re.match(r"^\d+(\.\d)? / \d+(\.\d)?$", fps_text.strip()), fps_text
    assert page.get_attribute("#state", "data-state") == "live"
    assert page.is_visible("#error") is False

    # the avatar's audio is received and decoded, and it carries the speech (not silence)
    audio = page.evaluate("window.avatarClient.audioStats")
    assert audio and audio["totalSamplesReceived"] > 48_000, audio
    assert audio["totalAudioEnergy"] > 0.001, audio
    assert page.evaluate("document.getElementById('audio').srcObject !== null")

    page.screenshot(path=str(tmp_path / "streaming.png"))

    page.click("#interrupt")
    page.wait_for_timeout(500)
    assert page.is_visible("#error") is False, page.text_content("#error-text")

    assert page.evaluate("window.avatarClient.lastMicState") == "live"
    page.click("#disconnect")
    page.wait_for_function("() => document.getElementById('state').dataset.state === 'idle'", timeout=5000)
    assert page.evaluate("window.avatarClient.lastMicState") == "ended"
    # The DELETE is sent right after the local teardown; give the server a moment to drop it.
    for _ in range(20):
        status, _ = http("GET", f"{server_url}/sessions/{session_id}/stats")
        if status == 404:
            break
        page.wait_for_timeout(100)
    assert status == 404, "the server still knows the session after Disconnect"


def test_page_shows_server_error_for_unknown_avatar(chromium_page, server_url, tmp_path):
    page = chromium_page
    page.goto(server_url + "/")
    page.evaluate("() => window.avatarClient.avatarsLoaded")  # else the list replaces our option
    page.evaluate(
        """() => {
            const select = document.getElementById('avatar-select');
            select.add(new Option('missing', 'no-such-avatar'));
            select.value = 'no-such-avatar';
        }"""
    )
    page.click("#connect")
    page.wait_for_selector("#error:not([hidden])", timeout=CONNECT_TIMEOUT_MS)
    text = page.text_content("#error-text")
    assert re.search(r"\(4\d\d\)", text), text  # status code shown, with the server's message
    assert "no-such-avatar" in text or "avatar" in text.lower(), text
    assert page.get_attribute("#state", "data-state") == "idle"
    assert page.is_enabled("#connect") and not page.is_enabled("#disconnect")
    page.screenshot(path=str(tmp_path / "error.png"))


def _server_frame_size() -> tuple[int, int]:
    """(width, height) the default server's lite engine renders (configs/server.yaml + lite config)."""
    from live_avatar.core.engines.lite.config import load_lite_config
    from live_avatar.server.config import load_server_config

    return tuple(load_lite_config(load_server_config().engine_options).size)


def _png(path, rgb) -> str:
    import av

    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    with av.open(str(path), "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "rgb24"
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return str(path)


def test_page_uploads_portrait_and_reports_a_rejected_one(chromium_page, server_url, tmp_path):
    import numpy as np
    from skimage import data

    page = chromium_page
    page.goto(server_url + "/")
    page.evaluate("() => window.avatarClient.avatarsLoaded")  # the list must not replace the upload

    page.set_input_files("#avatar-file", _png(tmp_path / "portrait.png", data.astronaut()))
    page.wait_for_function(
        "() => /uploaded/.test(document.getElementById('avatar-select').selectedOptions[0].textContent)",
        timeout=60_000,
    )
    avatar_id = page.eval_on_selector("#avatar-select", "s => s.value")
    assert avatar_id and avatar_id != "default"
    assert page.is_visible("#avatar-preview")
    assert page.is_visible("#error") is False

    # a flat grey picture has no face: the server refuses it and the page says why
    page.set_input_files("#avatar-file", _png(tmp_path / "grey.png", np.full((256, 256, 3), 128, np.uint8)))
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    text = page.text_content("#error-text")
    assert re.search(r"\(4\d\d\)", text), text
    assert page.eval_on_selector("#avatar-select", "s => s.value") == avatar_id  # selection unchanged


def test_page_notices_when_the_server_ends_the_session(chromium_page, server_url, http):
    page = chromium_page
    _connect(page, server_url)
    session_id = page.evaluate("window.avatarClient.sessionId")
    status, _ = http("DELETE", f"{server_url}/sessions/{session_id}")
    assert status == 200
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "ended the session" in page.text_content("#error-text")
    assert page.get_attribute("#state", "data-state") == "idle"
    assert page.is_enabled("#connect")


def test_page_reports_a_busy_server(chromium_page, server_url):
    """A 503 from /offer (engine at capacity) is shown as such and leaves the page ready to retry."""
    page = chromium_page
    busy = {"error": "the server is at capacity (4 live sessions); try again later", "reason": "capacity"}
    page.route("**/offer", lambda route: route.fulfill(status=503, json=busy))
    page.goto(server_url + "/")
    page.click("#connect")
    page.wait_for_selector("#error:not([hidden])", timeout=CONNECT_TIMEOUT_MS)
    text = page.text_content("#error-text")
    assert text.startswith("Server busy (503)") and "capacity" in text, text
    assert page.get_attribute("#state", "data-state") == "idle"
    assert page.is_enabled("#connect")
    # the microphone was opened for the attempt and released with it
    assert page.evaluate("window.avatarClient.lastMicState") == "ended"


def test_page_with_a_token_in_its_url_works_and_without_says_it_needs_one(chromium_page, token_server_url, access_token, http, tmp_path):
    """A server started with --token: the page opened without the token says so; opened with
    ?token= it keeps the token (also across a reload), drops it from the address bar and sends it
    on every request: avatar list, upload, offer, stats, interrupt, disconnect."""
    from skimage import data

    page = chromium_page
    bearer = {"Authorization": f"Bearer {access_token}"}
    page.goto(token_server_url + "/")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    text = page.text_content("#error-text")
    assert "Access token needed (401)" in text and "?token=" in text, text

    page.goto(f"{token_server_url}/?token={access_token}")
    page.evaluate("() => window.avatarClient.avatarsLoaded")
    assert "token" not in page.url, page.url  # taken out of the address bar
    page.reload()  # kept for the tab
    page.evaluate("() => window.avatarClient.avatarsLoaded")
    assert page.evaluate("window.avatarClient.hasAccessToken")
    assert page.is_visible("#error") is False, page.text_content("#error-text")

    page.set_input_files("#avatar-file", _png(tmp_path / "portrait.png", data.astronaut()))
    page.wait_for_function(
        "() => /uploaded/.test(document.getElementById('avatar-select').selectedOptions[0].textContent)",
        timeout=60_000,
    )
    avatar_id = page.eval_on_selector("#avatar-select", "s => s.value")
    status, listing = http("GET", f"{token_server_url}/avatars", headers=bearer)
    assert status == 200 and avatar_id in [a["avatar_id"] for a in listing["avatars"]], listing  # the token's upload

    page.click("#connect")
    page.wait_for_function(
        "() => window.avatarClient.connected && window.avatarClient.framesPresented > 0", timeout=CONNECT_TIMEOUT_MS
    )
    session_id = page.evaluate("window.avatarClient.sessionId")
    before = _frames(page)
    page.wait_for_timeout(MEASURE_WINDOW_S * 1000)
    decoded = _frames(page)["total"] - before["total"]
    assert decoded >= MIN_FRAMES_IN_WINDOW, f"only {decoded} video frames in {MEASURE_WINDOW_S} s; console: {page.console_log[-10:]}"
    page.wait_for_function(  # the overlay's numbers come from the stats route, with the token
        "() => /^\\d+ ms$/.test(document.getElementById('stat-first-frame').textContent.trim())", timeout=5000
    )
    assert http("GET", f"{token_server_url}/sessions/{session_id}/stats")[0] == 401
    status, stats = http("GET", f"{token_server_url}/sessions/{session_id}/stats", headers=bearer)
    assert status == 200 and stats["state"] == "live", stats

    page.click("#interrupt")
    page.wait_for_timeout(500)
    assert page.is_visible("#error") is False, page.text_content("#error-text")
    page.click("#disconnect")
    page.wait_for_function("() => document.getElementById('state').dataset.state === 'idle'", timeout=5000)
    for _ in range(20):
        status, _ = http("GET", f"{token_server_url}/sessions/{session_id}/stats", headers=bearer)
        if status == 404:
            break
        page.wait_for_timeout(100)
    assert status == 404, "the server still knows the session after Disconnect"
