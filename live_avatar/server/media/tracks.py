"""Outgoing WebRTC tracks of one consumer: both read the session's playout through a subscription.

Each track's timestamps come from the session's one ``MediaClock`` (video pts = slot * 3600 at
90 kHz; audio pts = audio frame index * 960 at 48 kHz), so the two cannot drift. aiortc calls
``recv()`` in its sender loop and swallows exceptions raised there, so they are logged here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from live_avatar.server.media.clock import MediaClock
from live_avatar.server.media.fanout import Subscription
from live_avatar.server.media.playout import OutputSlot

log = logging.getLogger(__name__)

SEND_TIMES_KEPT = 50  # slots whose send time a track remembers (for the A/V offset)
STALE_SLOTS = 1.5  # a slot this late (in frame durations) is skipped if a newer one is waiting
SEND_GAP_S = 0.12  # a longer wait between two frames handed to the sender is a send gap (a stall at the viewer)
SEND_GAPS_KEPT = 200


class SendTimes:
    """When a track handed each recent slot to its sender (bounded)."""

    def __init__(self) -> None:
        self._times: OrderedDict[int, float] = OrderedDict()

    def note(self, slot: int, t: float) -> None:
        if slot not in self._times:
            self._times[slot] = t
            while len(self._times) > SEND_TIMES_KEPT:
                self._times.popitem(last=False)

    def get(self, slot: int) -> float | None:
        return self._times.get(slot)

    def slots(self) -> list[int]:
        return list(self._times)


class _SlotTrack(MediaStreamTrack):
    """A track that sends one consumer's playout slots (a subscription of the session's fan-out)."""

    def __init__(self, subscription: Subscription[OutputSlot], clock: MediaClock) -> None:
        super().__init__()
        self._sub = subscription
        self._clock = clock
        self.frames_sent = 0
        self.send_times = SendTimes()

    async def _next_slot(self) -> OutputSlot:
        """The next slot to send, skipping stale ones; MediaStreamError once the session ended."""
        slot = await self._sub.get_fresh(self._is_stale)
        if slot is None:
            self.stop()
            raise MediaStreamError("session ended")
        return slot

    def _is_stale(self, slot: OutputSlot) -> bool:
        return self._clock.now() - slot.due > STALE_SLOTS / self._clock.fps

    def stop(self) -> None:
        self._sub.close()
        super().stop()


class AvatarVideoTrack(_SlotTrack):
    """25 fps avatar video; one frame per playout slot."""

    kind = "video"

    def __init__(
        self,
        subscription: Subscription[OutputSlot],
        clock: MediaClock,
        on_sent: Callable[[OutputSlot], None] | None = None,
    ) -> None:
        super().__init__(subscription, clock)
        self._on_sent = on_sent
        self.last_slot: OutputSlot | None = None
        # [monotonic start s, ms, "send"] of each gap over SEND_GAP_S between two frames handed to aiortc: its
        # sender asks for the next frame only once the last is encoded, so a slow encoder shows here too
        self.send_gaps: deque[list] = deque(maxlen=SEND_GAPS_KEPT)
        self._last_sent_at: float | None = None

    async def recv(self) -> av.VideoFrame:
        try:
            slot = await self._next_slot()
            frame = av.VideoFrame.from_ndarray(slot.frame, format="rgb24")
            frame.pts = self._clock.video_pts(slot.slot)
            frame.time_base = self._clock.video_time_base
            self.frames_sent += 1
            self.last_slot = slot
            now = time.monotonic()
            self.send_times.note(slot.slot, now)
            if self._last_sent_at is not None and now - self._last_sent_at > SEND_GAP_S:
                self.send_gaps.append([round(self._last_sent_at, 4), round((now - self._last_sent_at) * 1000.0, 1), "send"])
            self._last_sent_at = now
            if self._on_sent is not None:
                self._on_sent(slot)
            return frame
        except (MediaStreamError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("video track recv failed")
            raise


class SyncedAudioTrack(_SlotTrack):
    """48 kHz speech in 20 ms frames; the audio of playout slot s is audio frames 2s and 2s+1."""

    kind = "audio"

    def __init__(self, subscription: Subscription[OutputSlot], clock: MediaClock) -> None:
        super().__init__(subscription, clock)  # send_times: slot -> when its first audio frame was handed over
        self._pending: list[tuple[int, np.ndarray]] = []  # (audio frame index, samples) of this slot
        self.last_frame_index: int | None = None  # video frame whose audio was sent last
        self.last_pts: int | None = None

    async def recv(self) -> av.AudioFrame:
        try:
            if not self._pending:
                slot = await self._next_slot()
                first = self._clock.first_audio_frame_of_slot(slot.slot)
                n = self._clock.audio_frame_samples
                parts = slot.audio.reshape(-1, n)
                self._pending = [(first + i, parts[i]) for i in range(parts.shape[0])]
                self.last_frame_index = slot.frame_index
            index, samples = self._pending.pop(0)
            # the slot's first audio frame is due now; later ones wait for their own time
            delay = self._clock.audio_frame_time(index) - self._clock.now()
            if delay > 0:
                await asyncio.sleep(delay)
            if index % self._clock.audio_frames_per_video_frame == 0:
                self.send_times.note(index // self._clock.audio_frames_per_video_frame, time.monotonic())
            return self._to_frame(index, samples)
        except (MediaStreamError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("audio track recv failed")
            raise

    def _to_frame(self, index: int, samples: np.ndarray) -> av.AudioFrame:
        # Both channels the same: handed a mono frame, aiortc's opus encoder upmixes it to stereo
        # through libswresample at -3 dB (the voice would go out quieter than it came in).
        pcm = np.repeat(np.ascontiguousarray(samples, np.int16), 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate = self._clock.audio_rate
        frame.pts = self._clock.audio_pts(index)
        frame.time_base = self._clock.audio_time_base
        self.frames_sent += 1
        self.last_pts = frame.pts
        return frame
