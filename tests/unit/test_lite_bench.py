"""``avatar bench lite`` end to end on a tiny workload: it measures, writes JSON and a contact sheet."""

from __future__ import annotations

import argparse
import json

import cv2
import pytest

lite_bench = pytest.importorskip("bench.lite")


def test_bench_writes_results_and_contact_sheet(tmp_path):
    parser = argparse.ArgumentParser()
    lite_bench.add_arguments(parser)
    out, sheet = tmp_path / "lite.json", tmp_path / "sheet.png"
    args = parser.parse_args(
        ["--seconds", "1", "--repeats", "1", "--sessions", "2", "--mode", "threads", "--size", "256*256",
         "--output", str(out), "--contact-sheet", str(sheet)]
    )
    assert lite_bench.run(args) == 0
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
