"""``avatar bench e2e`` run for real (lite engine, a real server and aiortc peer, espeak-ng speech), short:
while it runs, <output>.partial.json carries the server's stats and the peer's figures so far (a GPU run
cut short keeps them); at the end the JSON has the summary keys and the partial file is gone."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {"gpu", "size", "duration_s", "fps_received", "frames_skipped", "frames_repeated",
                "speech_to_lips_peer_p50_ms", "speech_to_lips_peer_p95_ms", "first_frame_peer_ms",
                "av_offset_p95_abs_ms", "gpu_memory_growth_mb"}


def test_a_short_run_writes_partial_figures_while_it_runs_and_the_summary_at_the_end(tmp_path):
    out = tmp_path / "e2e.json"
    partial = tmp_path / "e2e.partial.json"
    cmd = [sys.executable, "-m", "live_avatar.cli.main", "bench", "e2e", "--engine", "lite", "--duration", "24",
           "--rss-baseline", "5", "--progress-every", "4", "--output", str(out),
           "--server-log", str(tmp_path / "server.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_peer, seen_server, seen_summary = None, False, None
    try:
        deadline = time.monotonic() + 150
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                snapshot = json.loads(partial.read_text())  # replaced atomically while the run goes on
            except FileNotFoundError:  # not written yet, or removed at the end
                snapshot = None
            if snapshot is not None:
                assert snapshot["benchmark"] == "e2e (in progress)"
                seen_server = seen_server or bool(snapshot["server_stats"])
                peer = snapshot.get("peer_so_far") or {}
                if peer.get("fps_received"):
                    seen_peer = peer
                if snapshot.get("summary_so_far"):
                    seen_summary = snapshot["summary_so_far"]
            time.sleep(0.5)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert seen_server, "no server stats in the partial JSON while the run went on"
    assert seen_peer is not None, f"no peer figures in the partial JSON while the run went on:\n{output[-3000:]}"
    assert 10 < seen_peer["fps_received"] < 40 and seen_peer["t_s"] < 24  # figures, not a speed check
    assert seen_peer["speech_to_lips_peer_ms"]["onsets_sent"] >= 1
    # the summary's keys so far: a run cut short keeps them
    assert seen_summary is not None and set(seen_summary) == SUMMARY_KEYS
    assert seen_summary["duration_s"] < 24 and 10 < seen_summary["fps_received"] < 40 and seen_summary["frames_skipped"] >= 0
    assert "peer p50" in output  # the progress line
    result = json.loads(out.read_text())
    assert set(result["summary"]) == SUMMARY_KEYS
    assert 10 < result["summary"]["fps_received"] < 40
    assert not partial.exists(), "the partial JSON is removed when the run's JSON is written"
    # the peer's stalls lined up with both processes' pauses (the server's from its session stats)
    stalls = result["stalls"]
    assert stalls["server_process_pauses"] is not None and stalls["peer_process_pauses"]["threshold_ms"] == 50.0
    # the longest pauses, timed like the stalls (from the first frame), so a pattern in time shows
    assert all(len(p) == 3 and p[0] > -60 for p in stalls["peer_process_pauses"]["longest"])
    for kind in ("decoded", "wire"):
        assert all(s["ms"] > 120 and s["cause"] in stalls[kind]["causes"] for s in stalls[kind]["stalls"])
        assert sum(stalls[kind]["causes"].values()) >= len(stalls[kind]["stalls"])
    assert len(stalls["decoded"]["stalls"]) == result["peer"]["video"]["stalls_over_120ms"] or \
        len(stalls["decoded"]["stalls"]) == 30
