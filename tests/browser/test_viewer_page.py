"""The viewer page (GET /sessions/{id}/view, for an OBS Browser Source) and the client's share panel,
in headless Chromium against a real server process.

One page is the speaker (the browser client with the fake microphone); the share panel shows the
viewer URL, starts and stops a recording; a second page opens the viewer URL and decodes frames
over WHEP, and comes back by itself when its viewer connection is ended on the server; a viewer
on .../sessions/latest/view follows the speaker into its next session after a reconnect.
"""

from __future__ import annotations

import pytest

from tests.browser.conftest import _serve
from tests.support.server_process import http_json

pytestmark = pytest.mark.browser

CONNECT_TIMEOUT_MS = 45_000
MIN_FRAMES = 25  # ~1 s of video at 25 fps (a loaded 2-core box decodes slower; this proves steady decoding)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    """`avatar serve` (lite engine) whose recordings go to a temporary folder, not the checkout."""
    folder = tmp_path_factory.mktemp("viewer-server")
    config = folder / "server.yaml"
    config.write_text(f"outputs:\n  recordings_dir: {folder / 'recordings'}\n")
    yield from _serve(["--config", str(config)], folder)


def _viewer_frames(page) -> dict:
    return page.evaluate(
        """() => {
            const v = document.getElementById('video');
            return {presented: window.avatarViewer.framesPresented, connects: window.avatarViewer.connects,
                    state: window.avatarViewer.connectionState, width: v.videoWidth, height: v.videoHeight,
                    muted: v.muted, controls: v.controls, error: window.avatarViewer.lastError,
                    fullWindow: v.getBoundingClientRect().width === window.innerWidth};
        }"""
    )


def test_share_panel_and_viewer_page(chromium_page, server_url) -> None:
    page = chromium_page
    page.goto(server_url + "/")
    assert page.is_hidden("#share")  # no session, nothing to share
    page.click("#connect")
    page.wait_for_function("() => window.avatarClient.connected && window.avatarClient.framesPresented > 0", timeout=CONNECT_TIMEOUT_MS)
    session_id = page.evaluate("() => window.avatarClient.sessionId")

    # -- the share panel: the two URLs, then a recording started and stopped from its buttons
    page.wait_for_selector("#share", state="visible", timeout=5000)
    view_url = page.input_value("#share-view-url")
    assert view_url == f"{server_url}/sessions/{session_id}/view", view_url
    assert page.input_value("#share-whep-url") == f"{server_url}/sessions/{session_id}/whep"
    page.uncheck("#share-view-audio")
    assert page.input_value("#share-view-url") == f"{view_url}?audio=0"
    page.click("#share-record-start")
    page.wait_for_selector("#share-outputs li[data-type=record] .output-state[data-state=recording]", timeout=15_000)
    assert page.is_disabled("#share-record-start")
    page.fill("#share-push-url", "rtmp://no-such-host.invalid/live/key")
    page.click("#share-push-start")
    page.wait_for_selector("#share-error", state="visible", timeout=10_000)
    assert "does not resolve" in page.text_content("#share-error")

    # -- the viewer page in a second tab: video only (audio=0), full window, no controls, frames decoded
    viewer = page.context.new_page()
    console: list[str] = []
    viewer.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
    viewer.goto(page.input_value("#share-view-url"))
    viewer.wait_for_function(f"() => window.avatarViewer.framesPresented > {MIN_FRAMES}", timeout=CONNECT_TIMEOUT_MS)
    seen = _viewer_frames(viewer)
    assert seen["width"] > 0 and seen["height"] > 0 and seen["muted"] and not seen["controls"] and seen["fullWindow"], seen
    assert seen["state"] == "connected" and seen["connects"] == 1, (seen, console)

    # -- the server ends this viewer (as when the session restarts or the network drops it):
    # the page connects again by itself and keeps decoding
    status, listing = http_json("GET", f"{server_url}/sessions/{session_id}/outputs")
    whep = [o for o in listing["outputs"] if o["type"] == "whep" and o["state"] != "closed"]
    assert status == 200 and len(whep) == 1, listing
    status, _ = http_json("DELETE", f"{server_url}{whep[0]['location']}")
    assert status == 200
    viewer.wait_for_function("() => window.avatarViewer.connects >= 2 && window.avatarViewer.connectionState === 'connected'", timeout=20_000)
    before = _viewer_frames(viewer)["presented"]
    viewer.wait_for_function(f"() => window.avatarViewer.framesPresented > {before + MIN_FRAMES}", timeout=20_000)

    # -- stop the recording from the panel; it stays listed, stopped, with a download link
    page.click("#share-outputs li[data-type=record] .output-stop")
    page.wait_for_selector("#share-outputs li[data-type=record] .output-state[data-state=stopped]", timeout=15_000)
    href = page.get_attribute("#share-outputs li[data-type=record] a", "href")
    assert href and "/recordings/" in href
    viewer.close()

    # -- a viewer on .../sessions/latest/view follows the speaker into its next session
    page.check("#share-view-follow")
    follow_url = page.input_value("#share-view-url")
    assert follow_url == f"{server_url}/sessions/latest/view?audio=0", follow_url
    follower = page.context.new_page()
    follower.goto(follow_url)
    follower.wait_for_function(f"() => window.avatarViewer.framesPresented > {MIN_FRAMES}", timeout=CONNECT_TIMEOUT_MS)
    assert follower.evaluate("() => window.avatarViewer.sessionId") == session_id
    page.click("#disconnect")
    page.wait_for_function("() => document.getElementById('state').dataset.state === 'idle'", timeout=10_000)
    page.click("#connect")
    page.wait_for_function("() => window.avatarClient.connected && window.avatarClient.framesPresented > 0", timeout=CONNECT_TIMEOUT_MS)
    next_session = page.evaluate("() => window.avatarClient.sessionId")
    assert next_session != session_id
    follower.wait_for_function(f"() => window.avatarViewer.sessionId === {next_session!r} && window.avatarViewer.connectionState === 'connected'",
                               timeout=30_000)
    before = _viewer_frames(follower)["presented"]
    follower.wait_for_function(f"() => window.avatarViewer.framesPresented > {before + MIN_FRAMES}", timeout=20_000)
    follower.close()
    page.click("#disconnect")
