"""AudioTimeline (the session's 16 kHz timeline) and block_window (offline block cutting)."""

from __future__ import annotations

import numpy as np
import pytest

from live_avatar.core.audio.timeline import AudioTimeline, block_window


def ramp(n: int, start: int = 0) -> np.ndarray:
    """Samples whose value encodes their index, so any misplaced sample shows."""
    return (np.arange(start, start + n, dtype=np.float32) + 1.0) / 100000.0


def test_append_read_and_zero_padding_at_both_ends():
    tl = AudioTimeline()
    assert tl.append(ramp(320), 1.0) == 0
    assert tl.append(ramp(320, 320), 1.02) == 320
    assert tl.write_cursor == 640
    window = tl.read(-100, 700)
    assert window.dtype == np.float32 and window.shape == (800,)
    assert not window[:100].any(), "before the session start reads as silence"
    np.testing.assert_array_equal(window[100:740], ramp(640))
    assert not window[740:].any(), "past the write cursor reads as silence"


def test_arrival_time_is_the_packet_that_holds_the_sample():
    tl = AudioTimeline()
    tl.append(ramp(320), 5.0)
    tl.append(ramp(160, 320), 5.5)
    assert tl.arrival_time(0) == 5.0
    assert tl.arrival_time(319) == 5.0
    assert tl.arrival_time(320) == 5.5
    assert tl.arrival_time(479) == 5.5
    with pytest.raises(IndexError):
        tl.arrival_time(480)


def test_pad_silence_to_index_records_pad_time():
    tl = AudioTimeline()
    tl.append(ramp(100), 1.0)
    assert tl.pad_silence_to(640, 2.0) == 540
    assert tl.pad_silence_to(600, 3.0) == 0, "never pads backwards"
    assert tl.write_cursor == 640
    assert not tl.read(100, 640).any()
    assert tl.arrival_time(639) == 2.0


def test_trim_bounds_memory_and_refuses_trimmed_reads():
    tl = AudioTimeline(initial_capacity_s=0.1)
    for i in range(2000):  # 40 s in 20 ms packets, keeping only the last second
        tl.append(ramp(320, i * 320), float(i))
        tl.trim_before(tl.write_cursor - 16000)
    assert tl.write_cursor == 640000
    assert len(tl) == 16000
    assert tl.capacity <= 4 * 16000, "storage must not grow with session length"
    np.testing.assert_array_equal(tl.read(640000 - 320, 640000), ramp(320, 640000 - 320))
    assert tl.arrival_time(640000 - 1) == 1999.0
    assert tl.arrival_time(tl.start_index) == float((640000 - 16000) // 320)
    with pytest.raises(ValueError, match="trimmed"):
        tl.read(0, 100)


def test_truncate_drops_pushed_but_unplayed_audio():
    tl = AudioTimeline()
    tl.append(ramp(1000), 1.0)
    tl.append(ramp(1000, 1000), 2.0)
    assert tl.truncate(1500) == 500
    assert tl.write_cursor == 1500
    tl.append(ramp(10, 7000), 3.0)  # new audio continues right after the cut
    np.testing.assert_array_equal(tl.read(1500, 1510), ramp(10, 7000))
    assert tl.arrival_time(1500) == 3.0 and tl.arrival_time(1499) == 2.0


def test_block_window_matches_slicing_and_zero_pads_both_ends():
    samples = ramp(3000)
    inner = block_window(samples, first_frame=2, num_frames=1, samples_per_frame=640, context=400, lookahead=100)
    np.testing.assert_array_equal(inner, samples[1280 - 400 : 1920 + 100])
    head = block_window(samples, 0, 2, 640, context=800, lookahead=0)
    assert head.shape == (800 + 1280,)
    assert not head[:800].any()
    np.testing.assert_array_equal(head[800:], samples[:1280])
    tail = block_window(samples, 4, 1, 640, context=0, lookahead=320)
    np.testing.assert_array_equal(tail[: 3000 - 2560], samples[2560:])
    assert tail.shape == (960,) and not tail[3000 - 2560 :].any()


def test_block_window_equals_timeline_read():
    samples = ramp(8000)
    tl = AudioTimeline()
    for i in range(0, 8000, 333):
        tl.append(samples[i : i + 333], 0.0)
    for first in range(0, 13, 3):
        expected = block_window(samples, first, 3, 640, context=1000, lookahead=480)
        np.testing.assert_array_equal(tl.read(first * 640 - 1000, (first + 3) * 640 + 480), expected)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="1-D"):
        block_window(np.zeros((2, 10), np.float32), 0, 1, 640, 0, 0)
    with pytest.raises(ValueError, match="num_frames"):
        block_window(np.zeros(10, np.float32), 0, 0, 640, 0, 0)
    tl = AudioTimeline()
    with pytest.raises(ValueError, match="1-D"):
        tl.append(np.zeros((10, 2), np.float32), 0.0)
    with pytest.raises(ValueError, match="reversed"):
        tl.read(10, 5)
