"""``avatar bench lite`` end to end on a tiny workload: it measures, writes JSON and a contact sheet."""

from __future__ import annotations

import json

import cv2
import pytest

lite_bench = pytest.importorskip("bench.lite")


def test_bench_writes_results_and_contact_sheet(tmp_path):
    from live_avatar.cli.main import main

    out, sheet = tmp_path / "lite.json", tmp_path / "sheet.png"
    # through the command line entry point, with an argv that is not sys.argv
    argv = ["bench", "lite", "--seconds", "1", "--repeats", "1", "--sessions", "2", "--mode", "threads",
            "--size", "256*256", "--output", str(out), "--contact-sheet", str(sheet)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    one, two = result["one_session"], result["concurrent_sessions"]
    assert one["sessions"] == 1 and two["sessions"] == 2
    for r in (one, two):
        assert r["min_session_fps"] > 0 and r["cpu_s_per_video_s"] > 0
        assert r["fps_per_busy_core"] == pytest.approx(25.0 / r["cpu_s_per_video_s"], rel=1e-6)
    assert result["machine"]["cores_available"] >= 1
    image = cv2.imread(str(sheet))
    assert image.shape == (4 * 256, 6 * 256, 3)
    assert len(result["contact_sheet"]["blink_frames"]) == 6
