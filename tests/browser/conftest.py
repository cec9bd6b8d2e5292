"""Fixtures for the browser tests: a real server process, a fake-microphone WAV, headless Chromium."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.support.server_process import ServerProcess, http_json
from tests.support.speech import write_wav


CHROMIUM = Path("/usr/bin/chromium")


@dataclass(frozen=True)
class BrowserTestConfig:
    server_start_timeout_s: float = 90.0  # the lite engine loads its face models at start-up
    fake_mic_rate: int = 48000  # Chromium's fake capture wants 16-bit PCM; 48 kHz avoids resampling quirks
    pause_s: float = 0.8  # silence between utterances, so speech onsets repeat while the file loops
    chromium_flags: tuple[str, ...] = field(
        default=(
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--autoplay-policy=no-user-gesture-required",
        )
    )


CONFIG = BrowserTestConfig()
BROWSER_TEST_TOKEN = "browser-test-token-3f9c2a71"


@pytest.fixture(scope="session")
def http():
    """``http(method, url, body=None) -> (status, json)`` for checks against the server's API."""
    return http_json


def _serve(serve_args: list[str], log_dir: Path):
    """`avatar serve *serve_args` with the default (lite) engine on a free loopback port, yielding
    its URL until the module is done."""
    server = ServerProcess(
        serve_args,
        log_dir / "server.log",
        start_timeout_s=CONFIG.server_start_timeout_s,
        # only the flags decide whether the server needs a token
        env={**{k: v for k, v in os.environ.items() if k != "AVATAR_TOKEN"}, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.url
    finally:
        server.stop()
        if os.environ.get("AVATAR_TEST_SHOW_SERVER_LOG"):
            print(server.log_tail(5000))


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    """`avatar serve` with the default (lite) engine on a free loopback port; stopped after the module.

    AVATAR_TEST_SERVER_URL points the tests at a server that is already running instead.
    """
    if os.environ.get("AVATAR_TEST_SERVER_URL"):
        yield os.environ["AVATAR_TEST_SERVER_URL"].rstrip("/")
        return
    yield from _serve([], tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="session")
def access_token() -> str:
    return BROWSER_TEST_TOKEN


@pytest.fixture(scope="module")
def token_server_url(tmp_path_factory, access_token) -> str:
    """`avatar serve --token TOKEN`: every API route needs ``access_token``."""
    yield from _serve(["--token", access_token], tmp_path_factory.mktemp("token-server"))


@pytest.fixture(scope="module")
def fake_mic_wav(tmp_path_factory, speech_16k) -> Path:
    """espeak-ng speech with pauses, 48 kHz 16-bit mono: Chromium loops it as the microphone."""
    import soxr

    pause = np.zeros(int(CONFIG.pause_s * 16000), np.float32)
    samples_16k = np.concatenate([pause, speech_16k, pause])
    samples = soxr.resample(samples_16k, 16000, CONFIG.fake_mic_rate).astype(np.float32)
    return write_wav(tmp_path_factory.mktemp("mic") / "mic_48k.wav", samples, CONFIG.fake_mic_rate)


@pytest.fixture
def chromium_page(tmp_path, fake_mic_wav):
    """A page in a fresh headless Chromium profile whose microphone plays ``fake_mic_wav``."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    args = [*CONFIG.chromium_flags, f"--use-file-for-fake-audio-capture={fake_mic_wav}"]
    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a user-data-dir: a fresh one per test.
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=args,
            viewport={"width": 1280, "height": 860},
        )
        page = context.pages[0] if context.pages else context.new_page()
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
        page.console_log = console  # read by tests in their failure messages
        try:
            yield page
        finally:
            context.close()
