"""Per-session playout: puts generated frames and their speech into MediaClock slots.

Slot s (due at ``clock.video_slot_time(s)``) carries one video frame and the 48 kHz audio of
exactly that frame, so lips and sound leave the server together; the speech is thereby delayed by
the generation latency and no more. The rules (DESIGN.md §2):

* the frame for slot s is the one after the frame shown in slot s-1 (``_next``);
* if it is not there yet, the last frame is repeated (with silence) and counted, and the frame
  goes out in the next slot when it comes: the playout slips one slot, absorbing jitter;
* a surplus that is not needed any more (the buffer never ran low for a whole second) is trimmed
  by dropping frames, so a slip does not cost latency for good;
* slots missed because the event loop stalled take their frames with them (dropped, counted);
* frames buffered beyond a bound are backlog and dropped; frame-index gaps (interrupt, skipped
  blocks upstream) are jumped over; a frame older than one already shown is past its slot and
  dropped.

* with a ``MarginControl`` (margin.py), the slot grid itself moves a few ms at a time in silence so
  that the margin follows the measured jitter instead of staying at ``playout_delay_s``;
* a chunk that carries the producer's full-band speech (48 kHz) is sent with it; else the 16 kHz
  copy is upsampled.

Each slot is published to a ``Fanout`` so that several consumers can send it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from live_avatar.core.contract import BlockTimings, Chunk
from live_avatar.server.media.clock import MediaClock
from live_avatar.server.media.fanout import Fanout
from live_avatar.server.media.margin import MarginControl

log = logging.getLogger(__name__)

WAIT_HISTORY = 100  # frames whose ready-to-slot wait is kept for the stats
TRIM_WINDOW_SLOTS = 25  # 1 s at 25 fps: how long a latency surplus must persist before a trim
QUIET_SLOT_RMS = 327  # int16 RMS (-40 dBFS) below which a slot's audio counts as silence (margin steps)


@dataclass(frozen=True)
class OutputSlot:
    slot: int  # MediaClock video slot: video pts = slot * 3600, audio frames 2*slot, 2*slot + 1
    due: float  # wall time the slot is sent
    frame_index: int  # session timeline index of the frame shown
    frame: np.ndarray  # uint8 [H, W, 3] RGB (shared by every consumer: read-only)
    audio: np.ndarray  # int16 [clock.audio_samples_per_video_frame] at 48 kHz
    repeated: bool


@dataclass
class _Buffered:
    frame: np.ndarray
    audio: np.ndarray
    ready_at: float
    onset_arrivals: list[float] = field(default_factory=list)
    timings: BlockTimings | None = None  # the block's (the first frame and onsets are timed from it)
    finished_at: float | None = None  # when the engine finished it (the margin control's slack)


@dataclass
class PlayoutCounters:
    slots: int = 0  # slots published (frames + repeats)
    frames_sent: int = 0  # distinct generated frames published
    frames_repeated: int = 0
    frames_dropped: int = 0  # generated frames never shown (late or backlog)
    slots_skipped: int = 0  # slots missed because the event loop woke too late
    discarded_by_interrupt: int = 0  # buffered frames thrown away by a barge-in
    trims: int = 0  # frames dropped to bring latency back down after a sustained surplus


class Playout:
    def __init__(
        self,
        clock: MediaClock,
        fanout: Fanout[OutputSlot],
        upsample: Callable[[np.ndarray], np.ndarray],  # 16 kHz float32 -> 48 kHz int16, streaming
        *,
        playout_delay_s: float,
        max_buffered_frames: int,
        on_slot: Callable[[OutputSlot, list[float]], None] | None = None,
        keep_every_frame: bool = False,
        margin: MarginControl | None = None,
        block_frames: int | None = None,
    ) -> None:
        self.clock = clock
        # pushed speech (a buffered stream, generated ahead by design): frames with sound are
        # dropped only beyond max_buffered_frames, never to trim latency or after a stall
        self._keep_every_frame = keep_every_frame
        self.fanout = fanout
        self._upsample = upsample
        self._playout_delay_s = playout_delay_s
        self._delay_frames = math.ceil(playout_delay_s * clock.fps)  # the delay, in frames
        self._max_buffered = max_buffered_frames
        self._silence = np.zeros(clock.audio_samples_per_video_frame, np.int16)  # a repeated frame's audio (read-only)
        self._silence.flags.writeable = False
        self._on_slot = on_slot
        self.margin = margin  # None: the slots stay where the first chunk put them
        self._buffer: OrderedDict[int, _Buffered] = OrderedDict()
        self._audio_carry = np.zeros(0, np.int16)
        # what the generator makes at once bounds the frames that may wait for their slots: its block (the
        # session's block_frames; a block may come in parts), else the largest chunk seen
        self._block_frames = block_frames
        self._largest_chunk = 1
        self._next: int | None = None  # frame index wanted for the next slot
        self._last: _Buffered | None = None
        # speech onsets of frames that were dropped: reported with the next frame that goes out
        self._orphan_onsets: list[float] = []
        self._last_index = -1
        self._min_depth = 1 << 30  # smallest buffer depth seen in the current trim window
        self._window_slots = 0
        self._window_sound = False  # a frame with sound went out in the current trim window
        self._started = asyncio.Event()
        self._closed = False
        self.counters = PlayoutCounters()
        # how long recent frames waited between being ready and their slot (the playout's share
        # of the latency; the rest is input + generation)
        self.recent_waits: deque[float] = deque(maxlen=WAIT_HISTORY)
        self.first_chunk_at: float | None = None
        # (block timings, when it reached the playout) of the frame just published, for on_slot
        self.emitted_timing: tuple[BlockTimings | None, float | None] = (None, None)

    # -- input ---------------------------------------------------------------------------------
    def add_chunk(self, chunk: Chunk, received_at: float | None = None) -> None:
        """Buffer a chunk's frames with their 48 kHz audio (called from the event loop)."""
        now = self.clock.now() if received_at is None else received_at
        n = chunk.num_frames
        if n == 0:
            return
        per_frame = self.clock.audio_samples_per_video_frame
        full = chunk.full_band_audio
        if full is not None and chunk.full_band_rate == self.clock.audio_rate and full.size == n * per_frame:
            # the producer's own full-band speech (same samples as the frames' 16 kHz copy)
            audio48 = (np.clip(full, -1.0, 1.0) * 32767.0).astype(np.int16)
        else:
            audio48 = self._audio_for_frames(chunk.audio, n * per_frame)
        self._largest_chunk = max(self._largest_chunk, n)
        out_of_order = bool(self._buffer) and chunk.first_frame < next(reversed(self._buffer))
        for i in range(n):
            index = chunk.first_frame + i
            if self._next is not None and index < self._next:
                self.counters.frames_dropped += 1  # already past its slot (after a gap jump or stall)
                self._orphan_onsets.extend(chunk.onsets_at(i))
                continue
            self._buffer[index] = _Buffered(
                frame=chunk.frames[i],
                audio=audio48[i * per_frame : (i + 1) * per_frame],
                ready_at=now,
                onset_arrivals=chunk.onsets_at(i),
                timings=chunk.timings,
                finished_at=chunk.timings.finished_at,
            )
        if out_of_order:  # rare (a regenerated block): keep the buffer in frame order
            self._buffer = OrderedDict(sorted(self._buffer.items()))
        self._bound_backlog()
        if self.first_chunk_at is None:
            self.first_chunk_at = now
            self.clock.start(now + self._playout_delay_s)
            self._next = chunk.first_frame
            self._started.set()

    def _audio_for_frames(self, audio16: np.ndarray, need: int) -> np.ndarray:
        """Upsample in stream order; the resampler's start-up delay is filled with leading zeros so
        that the audio of frame k always is samples [k*1920, (k+1)*1920) of the output stream."""
        out = np.asarray(self._upsample(np.asarray(audio16, np.float32)), np.int16)
        pending = np.concatenate([self._audio_carry, out]) if self._audio_carry.size else out
        if pending.size < need:
            pending = np.concatenate([np.zeros(need - pending.size, np.int16), pending])
        self._audio_carry = pending[need:]
        # bound the carry: a resampler never runs more than a frame ahead of its input
        if self._audio_carry.size > self.clock.audio_samples_per_video_frame:
            self._audio_carry = self._audio_carry[-self.clock.audio_samples_per_video_frame :]
        return pending[:need]

    def _ahead_limit(self) -> int:
        if self._keep_every_frame:
            return self._max_buffered
        block = max(self._block_frames or 0, self._largest_chunk)
        return min(self._max_buffered, 2 * block + self._delay_frames + 2)

    def _bound_backlog(self) -> None:
        limit = self._ahead_limit()
        while len(self._buffer) > limit:
            self._drop_oldest()

    def _trim_surplus(self) -> None:
        """A repeat makes the next frames go out one slot later (absorbing jitter). If for a
        whole window the buffer never ran lower than the configured delay, that surplus is latency
        nobody needs: drop it to win those slots back."""
        self._min_depth = min(self._min_depth, len(self._buffer))
        self._window_slots += 1
        if self._window_slots < TRIM_WINDOW_SLOTS:
            return
        surplus = min(self._min_depth - self._delay_frames, len(self._buffer))
        if self._keep_every_frame and self._window_sound:
            surplus = 0  # pushed speech: trim only after a whole window of silence
        dropped = 0
        for _ in range(max(surplus, 0)):
            if self._keep_every_frame and np.any(next(iter(self._buffer.values())).audio):
                break  # pushed speech: only silent frames go (a stall's delay is won back in a pause)
            self._drop_oldest()
            dropped += 1
        if dropped:
            self.counters.trims += 1
            self._next = next(iter(self._buffer), self._next)
        self._min_depth, self._window_slots, self._window_sound = 1 << 30, 0, False

    def discard_buffered(self) -> int:
        """Barge-in: frames waiting for their slot are not played (the speech stops now)."""
        n = len(self._buffer)
        self._buffer.clear()
        self._orphan_onsets = []
        self.counters.discarded_by_interrupt += n
        return n

    # -- output --------------------------------------------------------------------------------
    def buffered_frames(self) -> int:
        return len(self._buffer)

    async def run(self) -> None:
        """Publish one slot every 1/fps from the clock's start until closed."""
        await self._started.wait()
        slot = 0
        while not self._closed:
            delay = self.clock.video_slot_time(slot) - self.clock.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._closed:
                break
            now = self.clock.now()
            current = self.clock.slot_at(now)
            if current > slot:  # the loop woke late: those slots are gone, keep the clock's pace
                self._skip_slots(current - slot)
                slot = current
            self._emit(slot, now)
            slot += 1

    def _drop_oldest(self) -> None:
        _, item = self._buffer.popitem(last=False)
        self._orphan_onsets.extend(item.onset_arrivals)
        self.counters.frames_dropped += 1

    def _drop_before(self, index: int) -> None:
        while self._buffer and next(iter(self._buffer)) < index:
            self._drop_oldest()

    def _skip_slots(self, n: int) -> None:
        """Slots that passed while the loop was busy take their frames with them; otherwise every
        stall would add its length to the latency for good."""
        self.counters.slots_skipped += n
        if self._next is None or self._keep_every_frame:  # pushed speech: played late rather than lost
            return
        self._next += n
        self._drop_before(self._next)

    def _choose(self) -> tuple[int, _Buffered] | None:
        """The frame for this slot: the wanted one, else the next after a gap, else the newest late one."""
        assert self._next is not None
        if not self._buffer:
            return None
        if self._next in self._buffer:
            return self._next, self._buffer[self._next]
        later = [i for i in self._buffer if i > self._next]
        if later:
            i = min(later)
            return i, self._buffer[i]
        i = max(self._buffer)  # only late frames (after a gap jump): show the newest, drop the rest
        return i, self._buffer[i]

    def _emit(self, slot: int, now: float) -> None:
        choice = self._choose()
        onsets: list[float] = []
        if choice is None:
            if self._last is None:
                return
            index, item, repeated = self._last_index, self._last, True
            audio = self._silence
            self.counters.frames_repeated += 1
        else:
            index, item = choice
            self._drop_before(index)
            del self._buffer[index]
            repeated = False
            audio = item.audio
            onsets = self._orphan_onsets + item.onset_arrivals
            self.emitted_timing = (item.timings, item.ready_at)
            self.recent_waits.append(now - item.ready_at)
            self._orphan_onsets = []
            self._last, self._last_index = item, index
            self._next = index + 1
            self.counters.frames_sent += 1
            self._window_sound = self._window_sound or bool(np.any(audio))
        self.counters.slots += 1
        self._trim_surplus()
        out = OutputSlot(
            slot=slot,
            due=self.clock.video_slot_time(slot),
            frame_index=index,
            frame=item.frame,
            audio=audio,
            repeated=repeated,
        )
        self.fanout.publish(out)
        if self._on_slot is not None:
            try:
                self._on_slot(out, onsets)
            except Exception:  # a stats hook must never stop the playout
                log.exception("playout slot callback failed")
        if self.margin is not None:
            self._follow_jitter(out, item)

    def _follow_jitter(self, out: OutputSlot, item: _Buffered) -> None:
        """Feed the margin control; move the slot grid when it says so (margin.py)."""
        finished = item.finished_at
        slack = -1.0 / self.clock.fps if out.repeated or finished is None else out.due - finished
        audio = out.audio.astype(np.float32)
        quiet = float(np.sqrt(np.mean(audio * audio))) < QUIET_SLOT_RMS if audio.size else True
        move = self.margin.observe(slack, quiet)
        if move:
            self.clock.shift(move)  # the stream hears of it with the next frame shown (on_slot's due)

    def close(self) -> None:
        self._closed = True
        self._started.set()
        self.fanout.close()
        self._buffer.clear()

