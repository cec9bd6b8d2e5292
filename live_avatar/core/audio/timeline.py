"""The session's 16 kHz audio timeline: samples by index, each with the arrival time of its packet.

Index i is sample i of the session (frame k covers [k*S, (k+1)*S), see ``live_avatar.core.contract``).
Reads before index 0 are silence (the session had not started), reads at or past the write cursor
are silence (not arrived). Memory stays bounded: the runtime trims what it no longer needs.

``block_window`` is the pure, whole-array counterpart used by offline generation.
"""

from __future__ import annotations

import bisect

import numpy as np


def block_window(
    samples: np.ndarray,
    first_frame: int,
    num_frames: int,
    samples_per_frame: int,
    context: int,
    lookahead: int,
) -> np.ndarray:
    """Cut ``samples[first_frame*S - context : (first_frame+num_frames)*S + lookahead]``.

    Indices outside the array (before 0 or past the end) read as zeros, so every block gets a
    window of exactly ``num_frames*S + context + lookahead`` samples (AudioBlock.samples).
    """
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D mono, got shape {samples.shape}")
    if num_frames < 1 or samples_per_frame < 1 or context < 0 or lookahead < 0:
        raise ValueError(
            "need num_frames >= 1, samples_per_frame >= 1, context >= 0, lookahead >= 0; got "
            f"{num_frames}, {samples_per_frame}, {context}, {lookahead}"
        )
    start = first_frame * samples_per_frame - context
    stop = (first_frame + num_frames) * samples_per_frame + lookahead
    out = np.zeros(stop - start, np.float32)
    lo, hi = max(start, 0), min(stop, samples.shape[0])
    if hi > lo:
        out[lo - start : hi - start] = samples[lo:hi]
    return out


class AudioTimeline:
    """Append-only (except for ``truncate``) sample store with per-packet arrival times.

    Not thread-safe by itself: the stream runtime guards it with its own lock.
    """

    def __init__(self, sample_rate: int = 16000, initial_capacity_s: float = 4.0):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate
        self._buf = np.zeros(max(int(initial_capacity_s * sample_rate), 1024), np.float32)
        self._base = 0  # timeline index of _buf[0]
        self._head = 0  # valid samples live in _buf[_head : _head + _len]
        self._len = 0
        # One entry per append/pad: the first index it wrote and when it arrived (sorted by index).
        self._seg_start: list[int] = []
        self._seg_time: list[float] = []

    # -- positions -----------------------------------------------------------------------------
    @property
    def write_cursor(self) -> int:
        """Index of the next sample to be appended (= samples written so far, trimmed or not)."""
        return self._base + self._len

    @property
    def start_index(self) -> int:
        """First index still stored (everything before was trimmed)."""
        return self._base

    @property
    def capacity(self) -> int:
        """Samples of storage allocated (bounded when the owner trims)."""
        return int(self._buf.shape[0])

    def __len__(self) -> int:
        return self._len

    # -- writing -------------------------------------------------------------------------------
    def append(self, samples: np.ndarray, t_arrival: float) -> int:
        """Append float32 mono samples that arrived at ``t_arrival``; returns their first index."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"samples must be 1-D mono, got shape {samples.shape}")
        first = self.write_cursor
        n = samples.shape[0]
        if n == 0:
            return first
        self._reserve(n)
        self._buf[self._head + self._len : self._head + self._len + n] = samples
        self._len += n
        self._seg_start.append(first)
        self._seg_time.append(float(t_arrival))
        return first

    def start_at(self, index: int) -> None:
        """An empty timeline starts at ``index`` (a copy that joins a running session)."""
        if self._len or self._seg_start:
            raise RuntimeError("start_at() is for an empty timeline")
        self._base = int(index)

    def pad_silence_to(self, index: int, t_now: float) -> int:
        """Input is late at a deadline: write zeros up to ``index``; returns how many were written."""
        missing = index - self.write_cursor
        if missing <= 0:
            return 0
        self.append(np.zeros(missing, np.float32), t_now)
        return missing

    def trim_before(self, index: int) -> None:
        """Forget samples before ``index`` (consumed or dropped backlog). Keeps the arrival time
        of the packet that holds ``index``."""
        index = min(index, self.write_cursor)
        drop = index - self._base
        if drop <= 0:
            return
        # Compact lazily: move the tail only when the dead head is at least half the buffer.
        self._base = index
        self._len -= drop
        self._head += drop
        if self._head >= self._buf.shape[0] // 2 or self._len == 0:
            self._compact()
        keep_from = bisect.bisect_right(self._seg_start, index) - 1
        if keep_from > 0:
            del self._seg_start[:keep_from]
            del self._seg_time[:keep_from]

    def truncate(self, index: int) -> int:
        """Drop samples at and after ``index`` (pushed audio that will not be played); returns how
        many were dropped. ``index`` below the stored range drops everything stored."""
        index = max(index, self._base)
        drop = self.write_cursor - index
        if drop <= 0:
            return 0
        self._len -= drop
        keep = bisect.bisect_left(self._seg_start, index)
        del self._seg_start[keep:]
        del self._seg_time[keep:]
        return drop

    # -- reading -------------------------------------------------------------------------------
    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) as a new float32 array; zeros before 0 and at/after the cursor."""
        if stop < start:
            raise ValueError(f"empty or reversed window [{start}, {stop})")
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, 0), min(stop, self.write_cursor)
        if hi > lo:
            if lo < self._base:
                raise ValueError(f"samples [{lo}, {self._base}) were already trimmed from the timeline")
            off = self._head
            out[lo - start : hi - start] = self._buf[off + lo - self._base : off + hi - self._base]
        return out

    def arrival_time(self, index: int) -> float:
        """When the packet holding sample ``index`` arrived (padded silence: when it was padded)."""
        if not self._base <= index < self.write_cursor:
            raise IndexError(f"sample {index} is not stored (stored: [{self._base}, {self.write_cursor}))")
        return self._seg_time[bisect.bisect_right(self._seg_start, index) - 1]

    # -- storage -------------------------------------------------------------------------------
    def _compact(self) -> None:
        off = self._head
        if off:
            self._buf[: self._len] = self._buf[off : off + self._len]
            self._head = 0

    def _reserve(self, n: int) -> None:
        off = self._head
        if off + self._len + n <= self._buf.shape[0]:
            return
        self._compact()
        if self._len + n > self._buf.shape[0]:
            grown = np.zeros(max(2 * self._buf.shape[0], self._len + n), np.float32)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
