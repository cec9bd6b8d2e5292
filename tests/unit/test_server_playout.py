"""Playout rules: frame k with its own audio in its slot, late -> repeat, past -> drop, bounded backlog."""

from __future__ import annotations

import numpy as np
import pytest

from live_avatar.core.contract import BlockTimings, Chunk
from live_avatar.server.media.clock import MediaClock
from live_avatar.server.media.fanout import Fanout
from live_avatar.server.media.playout import TRIM_WINDOW_SLOTS, OutputSlot, Playout

S = 640  # 16 kHz samples per frame


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def upsample_x3(x: np.ndarray) -> np.ndarray:
    """Exact 16k -> 48k stand-in (sample repeat) so a frame's audio can be recognised downstream."""
    return np.repeat(np.round(x * 32767), 3).astype(np.int16)


def chunk(first: int, n: int) -> Chunk:
    """Frames whose pixel value is their index; audio of frame k is the constant k/1000."""
    frames = np.stack([np.full((4, 4, 3), (first + i) % 256, np.uint8) for i in range(n)])
    audio = np.concatenate([np.full(S, (first + i) / 1000.0, np.float32) for i in range(n)])
    timings = BlockTimings(audio_ready_at=0.0, started_at=0.0, finished_at=0.0, compute_s=0.0)
    return Chunk(frames=frames, audio=audio, first_frame=first, speech=np.zeros(n, bool), timings=timings)


def make(max_buffered: int = 50, delay_s: float = 0.0, block_frames: int | None = None):
    now = FakeTime()
    clock = MediaClock(now=now)
    fanout: Fanout[OutputSlot] = Fanout(default_maxsize=1000)
    sub = fanout.subscribe("test")
    playout = Playout(clock, fanout, upsample_x3, playout_delay_s=delay_s, max_buffered_frames=max_buffered,
                      block_frames=block_frames)
    return now, clock, playout, sub


def emit(playout: Playout, clock: MediaClock, slot: int) -> None:
    playout._emit(slot, clock.video_slot_time(slot))


def drain(sub) -> list[OutputSlot]:
    out = []
    while sub.qsize():
        out.append(sub._queue.get_nowait())
    return out


def audio_tag(slot: OutputSlot) -> float:
    return float(slot.audio.astype(np.float32).mean() / 32767 * 1000)


def test_each_slot_carries_its_frame_and_that_frames_audio() -> None:
    now, clock, playout, sub = make()
    playout.add_chunk(chunk(0, 2))
    assert clock.t0 == now.t  # the first chunk starts the clock (no extra delay configured)
    for s in range(6):
        if s % 2 == 0:
            playout.add_chunk(chunk(s + 2, 2))
        emit(playout, clock, s)
    slots = drain(sub)
    assert [x.frame_index for x in slots] == list(range(6))
    assert [int(x.frame[0, 0, 0]) for x in slots] == list(range(6))
    assert all(x.audio.shape == (1920,) for x in slots)
    assert [round(audio_tag(x)) for x in slots] == list(range(6))  # frame k's own audio
    assert not any(x.repeated for x in slots)
    assert playout.counters.frames_sent == 6 and playout.counters.frames_repeated == 0


def test_a_late_frame_is_repeated_then_shown_with_its_audio() -> None:
    now, clock, playout, sub = make()
    playout.add_chunk(chunk(0, 1))
    emit(playout, clock, 0)
    emit(playout, clock, 1)  # frame 1 not there yet: repeat frame 0, silent
    playout.add_chunk(chunk(1, 1))
    emit(playout, clock, 2)
    slots = drain(sub)
    assert [(x.frame_index, x.repeated) for x in slots] == [(0, False), (0, True), (1, False)]
    assert np.all(slots[1].audio == 0)
    assert round(audio_tag(slots[2])) == 1
    assert playout.counters.frames_repeated == 1 and playout.counters.frames_dropped == 0


def test_frames_past_their_slot_are_dropped() -> None:
    now, clock, playout, sub = make()
    playout.add_chunk(chunk(0, 1))
    emit(playout, clock, 0)
    playout.add_chunk(chunk(5, 2))  # a gap (frames 1..4 were skipped upstream)
    emit(playout, clock, 1)
    playout.add_chunk(chunk(3, 1))  # arrives after frame 5 went out: past its slot
    emit(playout, clock, 2)
    slots = drain(sub)
    assert [x.frame_index for x in slots] == [0, 5, 6]
    assert playout.counters.frames_dropped == 1


def test_backlog_is_bounded_and_the_newest_frames_are_kept() -> None:
    now, clock, playout, sub = make(max_buffered=10)
    playout.add_chunk(chunk(0, 2))
    playout.add_chunk(chunk(2, 200))  # a burst, e.g. after the event loop stalled
    assert playout.buffered_frames() <= 10
    assert playout.counters.frames_dropped >= 192
    emit(playout, clock, 0)
    (slot,) = drain(sub)
    assert slot.frame_index > 190  # latency was cut, not kept


def test_a_block_in_parts_is_not_taken_for_backlog() -> None:
    """12-frame blocks delivered 4 frames at a time (liveavatar's generate_parts): the frames that
    wait for their slots are bounded by the block, not by the part, or every block would lose frames."""
    now, clock, playout, sub = make(max_buffered=100, block_frames=12)
    for block in range(2):  # the next block done before this one is shown: 24 frames wait
        for a in range(0, 12, 4):
            part = chunk(12 * block + a, 4)
            part.ends_block = a == 8
            playout.add_chunk(part)
    for slot in range(24):
        emit(playout, clock, slot)
    assert playout.counters.frames_dropped == 0 and playout.counters.frames_repeated == 0
    assert [x.frame_index for x in drain(sub)] == list(range(24))


def test_a_sustained_surplus_is_trimmed_back() -> None:
    now, clock, playout, sub = make()
    playout.add_chunk(chunk(0, 4))  # 4 frames ahead, and every slot one more arrives: surplus
    for s in range(TRIM_WINDOW_SLOTS + 1):
        playout.add_chunk(chunk(4 + s, 1))
        emit(playout, clock, s)
    assert playout.counters.trims == 1
    assert playout.buffered_frames() == 0  # the surplus (4 frames ahead, 0 wanted) was dropped
    indices = [x.frame_index for x in drain(sub)]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)


def test_interrupt_discards_waiting_frames() -> None:
    now, clock, playout, sub = make()
    playout.add_chunk(chunk(0, 6))
    emit(playout, clock, 0)
    assert playout.discard_buffered() == 5
    playout.add_chunk(chunk(6, 1))
    emit(playout, clock, 1)
    assert [x.frame_index for x in drain(sub)] == [0, 6]


def test_slow_consumer_loses_its_oldest_slots_and_never_blocks_others() -> None:
    fanout: Fanout[int] = Fanout(default_maxsize=3)
    fast, slow = fanout.subscribe("fast", maxsize=100), fanout.subscribe("slow")
    for i in range(50):
        fanout.publish(i)
    assert fast.qsize() == 50 and fast.dropped == 0
    assert slow.qsize() == 3 and slow.dropped == 47
    assert [slow._queue.get_nowait() for _ in range(3)] == [47, 48, 49]


async def test_closing_the_fanout_ends_every_consumer() -> None:
    fanout: Fanout[int] = Fanout(default_maxsize=2)
    sub = fanout.subscribe()
    fanout.publish(1)
    fanout.close()
    assert await sub.get() == 1
    assert await sub.get() is None
    late = fanout.subscribe()
    assert await late.get() is None


@pytest.mark.parametrize("delay_ms", [0, 80])
def test_first_slot_is_due_after_the_configured_delay(delay_ms: int) -> None:
    now, clock, playout, sub = make(delay_s=delay_ms / 1000)
    playout.add_chunk(chunk(0, 1))
    assert clock.video_slot_time(0) == pytest.approx(now.t + delay_ms / 1000)


async def test_slots_missed_by_a_stalled_loop_take_their_frames_along() -> None:
    import asyncio

    now, clock, playout, sub = make()
    playout.add_chunk(chunk(0, 20))
    task = asyncio.create_task(playout.run())
    await asyncio.sleep(0)
    now.t = clock.video_slot_time(0)
    await asyncio.sleep(0.01)  # slot 0 goes out
    now.t = clock.video_slot_time(5)  # the loop was stuck for 5 slots
    await asyncio.sleep(0.1)  # the playout's own (real) 40 ms sleep ends and it looks at the clock
    playout.close()
    await task
    slots = [x for x in drain(sub) if x is not None]
    assert [(x.slot, x.frame_index) for x in slots][:2] == [(0, 0), (5, 5)]  # latency unchanged
    assert playout.counters.slots_skipped == 4 and playout.counters.frames_dropped == 4


def test_speech_onset_of_a_dropped_frame_is_reported_with_the_next_frame_sent() -> None:
    reported: list[tuple[int, list[float]]] = []
    now, clock, playout, sub = make()
    playout._on_slot = lambda slot, onsets: reported.append((slot.frame_index, onsets))
    playout.add_chunk(chunk(0, 1))
    emit(playout, clock, 0)
    late = chunk(1, 2)
    late.speech_onset_arrivals = [123.0]
    playout.add_chunk(late)
    playout._skip_slots(1)  # frame 1 (carrying the onset) is dropped with its slot
    emit(playout, clock, 2)
    assert reported == [(0, []), (2, [123.0])]
    assert playout.counters.frames_dropped == 1


def test_speech_onset_goes_out_with_its_own_frame_not_the_blocks_first() -> None:
    """In a 12-frame block the onset's frame is sent up to 11 slots after the block's first: that is
    when the lips show it (what the receiving peer measures)."""
    reported: list[tuple[int, list[float]]] = []
    now, clock, playout, sub = make()
    playout._on_slot = lambda slot, onsets: reported.append((slot.frame_index, onsets))
    block = chunk(0, 12)
    block.speech_onset_arrivals, block.speech_onset_offsets = [10.0, 11.0], [5, 11]
    playout.add_chunk(block)
    for s in range(12):
        emit(playout, clock, s)
    assert [(frame, onsets) for frame, onsets in reported if onsets] == [(5, [10.0]), (11, [11.0])]


def test_speech_onset_without_offsets_goes_out_with_the_first_frame() -> None:
    block = chunk(0, 3)
    block.speech_onset_arrivals = [7.0]
    assert [block.onsets_at(i) for i in range(3)] == [[7.0], [], []]


def test_out_of_order_chunks_are_played_in_frame_order() -> None:
    now, clock, playout, sub = make()
    playout.add_chunk(chunk(0, 1))
    playout.add_chunk(chunk(3, 2))
    playout.add_chunk(chunk(1, 2))
    for s in range(5):
        emit(playout, clock, s)
    assert [x.frame_index for x in drain(sub)] == [0, 1, 2, 3, 4]


async def test_a_consumer_that_fell_behind_skips_stale_items_only_when_newer_ones_wait() -> None:
    fanout: Fanout[int] = Fanout(default_maxsize=10)
    sub = fanout.subscribe()
    for i in range(5):
        fanout.publish(i)
    assert await sub.get_fresh(lambda i: i < 3) == 3  # 0..2 stale, 3 is fresh
    assert sub.skipped_stale == 3
    assert await sub.get_fresh(lambda i: True) == 4  # stale, but nothing newer: still delivered


def test_pushed_speech_keeps_frames_with_sound_and_trims_only_silence() -> None:
    """keep_every_frame (a buffered stream): a deep buffer is not trimmed while there is sound, a
    stalled loop's slots do not take their frames along; a whole window of silence is trimmed."""
    now = FakeTime()
    clock = MediaClock(now=now)
    fanout: Fanout[OutputSlot] = Fanout(default_maxsize=1000)
    sub = fanout.subscribe("test")
    playout = Playout(clock, fanout, upsample_x3, playout_delay_s=0.0, max_buffered_frames=200, keep_every_frame=True)
    playout.add_chunk(chunk(1, 40))  # speech (audio k/1000 > 0), 40 frames ahead: far above the delay
    for s in range(TRIM_WINDOW_SLOTS + 2):
        emit(playout, clock, s)
    playout._skip_slots(5)  # the loop stalled for 5 slots
    emit(playout, clock, TRIM_WINDOW_SLOTS + 8)
    shown = [x.frame_index for x in drain(sub)]
    assert shown == list(range(1, TRIM_WINDOW_SLOTS + 4)), "every frame with sound is shown, in order"
    assert playout.counters.frames_dropped == 0 and playout.counters.trims == 0

    silent = chunk(100, 40)
    silent.audio[:] = 0.0
    playout.add_chunk(silent)
    slot = TRIM_WINDOW_SLOTS + 9
    for _ in range(3 * TRIM_WINDOW_SLOTS):
        emit(playout, clock, slot)
        slot += 1
    later = [x.frame_index for x in drain(sub) if not x.repeated]
    assert shown + [i for i in later if i < 100] == list(range(1, 41)), "no frame with sound was dropped"
    assert playout.counters.trims >= 1 and playout.counters.frames_dropped > 0  # the silent surplus went
