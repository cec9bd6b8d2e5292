"""MediaClock: both tracks take their timestamps from one start time and never drift."""

from __future__ import annotations

from fractions import Fraction

import pytest

from live_avatar.server.media.clock import MediaClock


class FakeTime:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_rtp_units_match_the_design() -> None:
    clock = MediaClock()
    clock.start(0.0)
    assert clock.video_pts(1) == 3600
    assert clock.audio_pts(1) == 960
    assert clock.audio_frames_per_video_frame == 2
    assert clock.video_time_base == Fraction(1, 90000)
    assert clock.audio_time_base == Fraction(1, 48000)


def test_audio_and_video_agree_exactly_over_an_hour() -> None:
    clock = MediaClock()
    clock.start(12345.678)
    slots_per_hour = 25 * 3600
    for slot in range(0, slots_per_hour + 1, 997):  # a spread of slots across the hour
        audio_index = clock.first_audio_frame_of_slot(slot)
        # presentation times in exact rational seconds: identical for the two tracks
        video_s = clock.video_pts(slot) * clock.video_time_base
        audio_s = clock.audio_pts(audio_index) * clock.audio_time_base
        assert video_s == audio_s == Fraction(slot, 25)
        # wall-clock due times agree to well under a microsecond
        assert clock.video_slot_time(slot) == pytest.approx(clock.audio_frame_time(audio_index), abs=1e-9)
    # after one hour the due time is start + 3600 s: no accumulated error
    assert clock.video_slot_time(slots_per_hour) - clock.t0 == pytest.approx(3600.0, abs=1e-9)
    assert clock.audio_frame_time(50 * 3600) - clock.t0 == pytest.approx(3600.0, abs=1e-9)


def test_simulated_hour_of_ticking_stays_on_the_wall_clock() -> None:
    """A playout that wakes a bit late every time (as asyncio does) still maps wall time to the
    right slot at the end of an hour: times come from the index, never from summed increments."""
    now = FakeTime(500.0)
    clock = MediaClock(now=now)
    clock.start()
    slot = 0
    for _ in range(25 * 3600):
        now.t = clock.video_slot_time(slot) + 0.003  # 3 ms scheduling lateness every tick
        assert clock.slot_at() == slot
        slot += 1
    assert clock.elapsed() == pytest.approx(3600.0 + 0.003 - 1 / 25, abs=1e-6)
    assert clock.slot_at(clock.t0 + 3600.0) == 25 * 3600


def test_slot_at_counts_a_wake_up_exactly_at_the_due_time() -> None:
    clock = MediaClock()
    clock.start(10.0)
    for slot in (0, 1, 7, 24, 25, 90000):
        assert clock.slot_at(clock.video_slot_time(slot)) == slot
        assert clock.slot_at(clock.video_slot_time(slot) - 0.001) == slot - 1


def test_start_is_fixed_once() -> None:
    now = FakeTime(1.0)
    clock = MediaClock(now=now)
    assert not clock.started
    with pytest.raises(RuntimeError):
        clock.video_slot_time(0)
    clock.start()
    now.t = 99.0
    clock.start()  # a second start must not move the time base
    assert clock.t0 == 1.0


@pytest.mark.parametrize("kwargs", [{"fps": 7}, {"fps": 25, "audio_frame_samples": 1000}])
def test_incompatible_rates_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        MediaClock(**kwargs)
