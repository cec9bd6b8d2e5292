"""Headless Chromium (Debian's, through Playwright) whose microphone plays a WAV file: the browser
tests and the browser benchmark open the client page in it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from tests.support.speech import write_wav

CHROMIUM = Path("/usr/bin/chromium")
FAKE_MIC_RATE = 48000  # Chromium's fake capture wants 16-bit PCM; 48 kHz avoids resampling quirks
FLAGS = (
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


def write_fake_mic(path: Path, samples_16k: np.ndarray, pause_s: float) -> Path:
    """``samples_16k`` between two pauses, as the 48 kHz 16-bit mono WAV that Chromium loops as its mic."""
    import soxr

    pause = np.zeros(int(pause_s * 16000), np.float32)
    samples = soxr.resample(np.concatenate([pause, samples_16k, pause]), 16000, FAKE_MIC_RATE)
    return write_wav(path, samples.astype(np.float32), FAKE_MIC_RATE)


@contextmanager
def chromium_page(profile_dir: Path, mic_wav: Path, *, viewport: dict | None = None) -> Iterator:
    """A page in a fresh headless Chromium profile at ``profile_dir``; its console lines are kept in
    ``page.console_log``."""
    from playwright.sync_api import sync_playwright

    args = [*FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}"]
    with sync_playwright() as playwright:
        # A persistent context is how Playwright takes a user-data-dir.
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=args,
            viewport=viewport or {"width": 1280, "height": 860},
        )
        page = context.pages[0] if context.pages else context.new_page()
        console: list[str] = []
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
        page.console_log = console
        try:
            yield page
        finally:
            context.close()
