"""``MarginControl``: the playout margin follows the measured generation jitter.

The playout's slots start at the first chunk + ``playout_delay_ms`` (40 ms). After that, each
published frame's slack (its slot's due time - when the engine finished it; a repeated frame
counts as a slot missed) is observed. The low tail of the slack (``quantile``, 2 %) is what the
margin must cover; anything above ``min_margin_s`` is latency nobody needs on a quiet machine, and
on a loaded one the margin must grow. So every ``window`` slots the slot grid is moved by the
difference (at most ``max_step_s`` a step), earlier or later, only while the outgoing audio is
quiet (``quiet_slots`` slots in a row), so a listener's jitter buffer absorbs the step in silence.

Moving the grid keeps both tracks on one clock (MediaClock.shift): sound and lips stay together.
The input side cannot do this finely: a frame is ready when the packet holding its last sample
arrives, so readiness comes in 20 ms steps; the slots can be placed to the millisecond.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class MarginControl:
    def __init__(self, *, min_margin_s: float, quantile: float = 0.02, window: int = 50, quiet_slots: int = 8,
                 max_step_s: float = 0.01, deadband_s: float = 0.002):
        if min_margin_s < 0 or not 0 < quantile < 0.5 or window < 5 or quiet_slots < 1 or max_step_s <= 0:
            raise ValueError("need min_margin_s >= 0, 0 < quantile < 0.5, window >= 5, quiet_slots >= 1, max_step_s > 0")
        self.min_margin_s = min_margin_s
        self.quantile = quantile
        self.window = window
        self.quiet_slots = quiet_slots
        self.max_step_s = max_step_s
        self.deadband_s = deadband_s
        self._slack: deque[float] = deque(maxlen=window)  # since the last move
        self._recent: deque[float] = deque(maxlen=window)  # for the stats (not cleared by a move)
        self._quiet = 0
        self.shifted_s = 0.0  # net move of the slot grid so far (negative: earlier, less latency)
        self.adjustments = 0
        self.last_low_s: float | None = None  # the slack's low quantile at the last decision

    def observe(self, slack_s: float, quiet: bool) -> float:
        """One slot's slack; returns how far to move the slot grid now (seconds, 0.0: not now)."""
        self._slack.append(slack_s)
        self._recent.append(slack_s)
        self._quiet = self._quiet + 1 if quiet else 0
        if len(self._slack) < self.window or self._quiet < self.quiet_slots:
            return 0.0
        low = float(np.quantile(np.asarray(self._slack), self.quantile))
        self.last_low_s = low
        error = low - self.min_margin_s
        if abs(error) < self.deadband_s:
            return 0.0
        move = -float(np.clip(error, -self.max_step_s, self.max_step_s))
        self._slack.clear()  # judge the next step on slots after this one
        self.shifted_s += move
        self.adjustments += 1
        return move

    def jitter_s(self) -> float | None:
        """Spread of the recent slack (median - low quantile): the generation jitter the margin covers."""
        if len(self._recent) < 5:
            return None
        arr = np.asarray(self._recent)
        return float(np.median(arr) - np.quantile(arr, self.quantile))

    def stats(self, configured_s: float) -> dict:
        arr = np.asarray(self._recent)

        def ms(value: float | None) -> float | None:
            return None if value is None else value * 1000.0

        return {
            "adaptive": True,
            "configured_ms": configured_s * 1000.0,
            "target_low_slack_ms": self.min_margin_s * 1000.0,
            "low_slack_ms": ms(self.last_low_s),
            "median_slack_ms": ms(float(np.median(arr)) if arr.size else None),
            "jitter_ms": ms(self.jitter_s()),
            "slots_moved_ms": self.shifted_s * 1000.0,
            "adjustments": self.adjustments,
        }
