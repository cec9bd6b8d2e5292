"""avatar bench browser-view's frame summary: rate, frames shown without a callback, and the hold from
a frame's last packet to its presentation."""

from __future__ import annotations

import pytest

from bench.browser_view import _per_frame_ms, summarize_frames


def test_hold_and_rate_from_the_frame_callbacks() -> None:
    # [receiveTime, presentationTime, expectedDisplayTime, presentedFrames, rtpTimestamp]; 25 fps,
    # held 10, 30, 50, 70 ms; the fourth callback skipped one shown frame
    rows = [[0.0, 10.0, 26.0, 1, 0], [40.0, 70.0, 86.0, 2, 3600], [80.0, 130.0, 146.0, 3, 7200],
            [160.0, 230.0, 246.0, 5, 14400], [200.0, None, None, 6, None]]
    out = summarize_frames(rows, duration_s=0.3)
    assert out["frames_presented"] == 4  # the row without a presentation time is left out
    assert out["frames_without_callback"] == 1
    assert out["fps_presented"] == pytest.approx(3 / 0.22)
    assert out["receive_to_present_ms"]["p50"] == pytest.approx(40.0)
    assert out["receive_to_present_ms"]["max"] == pytest.approx(70.0)
    assert out["present_gap_ms"]["max"] == pytest.approx(100.0)


def test_frames_without_receive_time_are_counted_not_held() -> None:
    rows = [[None, 10.0, 20.0, 1, 0], [None, 50.0, 60.0, 2, 3600]]
    out = summarize_frames(rows, duration_s=0.1)
    assert out["frames_with_receive_time"] == 0 and "receive_to_present_ms" not in out
    assert summarize_frames(rows[:1], duration_s=0.1) == {"frames_presented": 1, "duration_s": 0.1}


def test_per_frame_means_come_from_the_window_between_two_polls() -> None:
    before = {"jitterBufferDelay": 1.0, "jitterBufferEmittedCount": 100}
    after = {"jitterBufferDelay": 3.0, "jitterBufferEmittedCount": 200}
    assert _per_frame_ms(before, after, "jitterBufferDelay", "jitterBufferEmittedCount") == pytest.approx(20.0)
    assert _per_frame_ms(before, before, "jitterBufferDelay", "jitterBufferEmittedCount") is None  # no frames
    assert _per_frame_ms(None, after, "jitterBufferDelay", "jitterBufferEmittedCount") is None
