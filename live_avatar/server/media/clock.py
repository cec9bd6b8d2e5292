"""MediaClock: one start time per session from which both outgoing tracks take their timestamps.

Video slot k is due at ``t0 + k / fps`` with RTP pts ``k * 3600`` (90 kHz); audio frame j (20 ms at
48 kHz) is due at ``t0 + j * 960 / 48000`` with pts ``j * 960``. Every time is computed from the
integer index and the one start time (never by adding increments), so the two tracks cannot drift
apart and neither drifts from the wall clock, however long the session runs.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from typing import Callable


class MediaClock:
    def __init__(
        self,
        *,
        fps: int = 25,
        video_clock_rate: int = 90_000,
        audio_rate: int = 48_000,
        audio_frame_samples: int = 960,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if video_clock_rate % fps:
            raise ValueError("the video clock rate must be a multiple of fps")
        if (audio_rate // fps) % audio_frame_samples:
            raise ValueError("a video frame must span a whole number of audio frames")
        self.fps = fps
        self.video_clock_rate = video_clock_rate
        self.audio_rate = audio_rate
        self.audio_frame_samples = audio_frame_samples
        self.video_ticks_per_frame = video_clock_rate // fps  # 3600
        self.audio_samples_per_video_frame = audio_rate // fps  # 1920
        self.audio_frames_per_video_frame = self.audio_samples_per_video_frame // audio_frame_samples  # 2
        self.video_time_base = Fraction(1, video_clock_rate)
        self.audio_time_base = Fraction(1, audio_rate)
        self._now = now
        self._t0: float | None = None

    # -- start ---------------------------------------------------------------------------------
    def start(self, t0: float | None = None) -> float:
        """Fix the start time (idempotent: the first call wins)."""
        if self._t0 is None:
            self._t0 = self._now() if t0 is None else float(t0)
        return self._t0

    @property
    def started(self) -> bool:
        return self._t0 is not None

    @property
    def t0(self) -> float:
        if self._t0 is None:
            raise RuntimeError("MediaClock not started")
        return self._t0

    def now(self) -> float:
        return self._now()

    def shift(self, delta_s: float) -> None:
        """Move every later slot of both tracks by ``delta_s`` (the playout margin following the
        jitter; steps well under a frame). Timestamps stay as they are: a receiver sees it as a
        one-off change of network delay."""
        self._t0 = self.t0 + float(delta_s)

    # -- video ---------------------------------------------------------------------------------
    def video_pts(self, slot: int) -> int:
        return slot * self.video_ticks_per_frame

    def video_slot_time(self, slot: int) -> float:
        return self.t0 + slot / self.fps

    def slot_at(self, t: float | None = None) -> int:
        """The video slot whose due time is the latest at or before ``t`` (default: now)."""
        t = self._now() if t is None else t
        # small epsilon: a wake-up exactly at the due time must count as that slot
        return math.floor((t - self.t0) * self.fps + 1e-9)

    # -- audio ---------------------------------------------------------------------------------
    def audio_pts(self, index: int) -> int:
        return index * self.audio_frame_samples

    def audio_frame_time(self, index: int) -> float:
        return self.t0 + index * self.audio_frame_samples / self.audio_rate

    def first_audio_frame_of_slot(self, slot: int) -> int:
        return slot * self.audio_frames_per_video_frame

    # -- both ----------------------------------------------------------------------------------
    def elapsed(self, t: float | None = None) -> float:
        return (self._now() if t is None else t) - self.t0
