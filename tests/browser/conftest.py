"""Fixtures for the browser tests: a real server process, a fake-microphone WAV, headless Chromium."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.chromium import CHROMIUM, write_fake_mic
from tests.support.chromium import chromium_page as open_chromium_page
from tests.support.server_process import ServerProcess, http_json


@dataclass(frozen=True)
class BrowserTestConfig:
    server_start_timeout_s: float = 90.0  # the lite engine loads its face models at start-up
    pause_s: float = 0.8  # silence between utterances, so speech onsets repeat while the file loops


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
    return write_fake_mic(tmp_path_factory.mktemp("mic") / "mic_48k.wav", speech_16k, CONFIG.pause_s)


@pytest.fixture
def chromium_page(tmp_path, fake_mic_wav):
    """A page in a fresh headless Chromium profile whose microphone plays ``fake_mic_wav``."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)")
    with open_chromium_page(tmp_path / "chromium-profile", fake_mic_wav) as page:
        yield page
