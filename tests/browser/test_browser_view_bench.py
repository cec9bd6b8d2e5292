"""`avatar bench browser-view` against a real server and headless Chromium: the JSON holds the frames
the page put on screen, each one's hold after its last packet, and the page's WebRTC counters."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.chromium import CHROMIUM

pytestmark = pytest.mark.browser


def test_browser_view_bench_measures_frames_on_screen(tmp_path, speech_16k) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (scripts/test.sh installs Debian's chromium)")
    out = tmp_path / "browser_view.json"
    proc = subprocess.run(
        [sys.executable, "-m", "live_avatar.cli.main", "bench", "browser-view", "--duration", "5", "--warmup", "1", "--runs", "2",
         "--output", str(out)], capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 2
    frames, rtc = result["runs"][1]["frames"], result["runs"][1]["webrtc_stats"]
    assert frames["frames_presented"] >= 25, frames  # ~5 fps at least on a loaded 2-core CI box
    assert frames["frames_with_receive_time"] >= 25, frames
    held = frames["receive_to_present_ms"]
    assert 0 < held["p50"] <= held["p95"] < 2000, held
    assert rtc["frames_decoded"] >= 25 and rtc["decode_ms"] > 0 and rtc["jitter_buffer_ms"] >= 0, rtc
    assert result["machine"]["chromium"].startswith("Chromium"), result["machine"]
    p50s = sorted(r["frames"]["receive_to_present_ms"]["p50"] for r in result["runs"])
    assert result["median_of_runs"]["receive_to_present_p50_ms"] == pytest.approx(sum(p50s) / 2)
    assert "run 2/2" in proc.stdout and "median of 2 run(s)" in proc.stdout


def test_browser_view_bench_refuses_a_server_that_is_not_there(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "live_avatar.cli.main", "bench", "browser-view", "--url", "http://127.0.0.1:9",
         "--duration", "2", "--output", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x.json").exists()
