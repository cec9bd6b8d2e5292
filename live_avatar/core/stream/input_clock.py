"""Keeps a live session's audio timeline anchored to the wall clock.

Model: sample i nominally arrives at ``t0 + i / sample_rate``. A block waits for its input until its
nominal arrival plus a jitter allowance, then the runtime pads silence ("padding debt"). Audio
that turns up afterwards was already replaced by that silence, so its late part is dropped: the
timeline never slides behind the clock and latency cannot grow. A packet that arrives *earlier*
than the model says (the first packet was delayed, or the sender's clock runs fast) moves the
anchor earlier instead, so nothing on time is ever dropped.
"""

from __future__ import annotations


class LiveInputClock:
    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.t0: float | None = None
        self._debt = 0  # samples of silence padded for input that may still arrive late

    def anchor(self, t0: float) -> None:
        self.t0 = float(t0)
        self._debt = 0

    def due(self, index: int) -> float:
        """Nominal arrival time of sample ``index`` (the one before it, strictly)."""
        assert self.t0 is not None, "anchor() first"
        return self.t0 + index / self.sample_rate

    def note_padding(self, samples: int) -> None:
        self._debt += samples

    def samples_to_drop(self, cursor: int, n: int, t_arrival: float) -> int:
        """How many samples at the front of an ``n``-sample packet arriving at ``t_arrival``
        (appended at ``cursor``) are late duplicates of padded silence."""
        assert self.t0 is not None, "anchor() first"
        lead = cursor + n - round((t_arrival - self.t0) * self.sample_rate)
        if lead <= 0:  # on time or late but not yet padded over: keep all, old debt is void
            self._debt = 0
            return 0
        drop = min(lead, self._debt, n)
        self._debt -= drop
        lead -= drop
        if lead > 0 and self._debt == 0:
            self.t0 -= lead / self.sample_rate
        return drop
