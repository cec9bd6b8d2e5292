"""Fixtures for the browser tests: a real server process, a fake-microphone WAV, headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_wav


CHROMIUM = Path("/usr/bin/chromium")
REPO_ROOT = Path(__file__).resolve().parents[2]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _avatar_executable() -> str:
    candidate = Path(sys.executable).parent / "avatar"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("avatar")
    if found is None:
        pytest.fail("the `avatar` command is not installed (run scripts/setup.sh --dev)")
    return found


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> tuple[int, dict | None]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, None


@pytest.fixture(scope="session")
def http():
    """``http(method, url, body=None) -> (status, json)`` for checks against the server's API."""
    return http_json


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    """`avatar serve` with the default (lite) engine on a free loopback port; stopped after the module.

    AVATAR_TEST_SERVER_URL points the tests at a server that is already running instead.
    """
    if os.environ.get("AVATAR_TEST_SERVER_URL"):
        yield os.environ["AVATAR_TEST_SERVER_URL"].rstrip("/")
        return
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "wb")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(
        [_avatar_executable(), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + CONFIG.server_start_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                if http_json("GET", f"{url}/healthz", timeout=2.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after {CONFIG.server_start_timeout_s} s:\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if os.environ.get("AVATAR_TEST_SHOW_SERVER_LOG"):
            print(log_path.read_text(errors="replace")[-5000:])


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
