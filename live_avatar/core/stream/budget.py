"""How much of its real-time budget a session's generator uses, and a warning when the margin is gone.

A block of B frames at F fps must be generated in B / F seconds (12 frames at 25 fps: 480 ms) or the
session falls behind and skips frames. The margin is what is left of that budget at the median
compute time of the recent blocks; below ``warn_below`` (10 %) any jitter (a sink refresh, a busy
GPU, the event loop) costs frames, so the session logs a warning once, and again only after the
margin has come back above the threshold (no log flood at the edge).
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from live_avatar.core.contract import LOW_COMPUTE_MARGIN

logger = logging.getLogger(__name__)


class ComputeBudget:
    def __init__(self, block_s: float, *, window: int = 8, warn_below: float = LOW_COMPUTE_MARGIN, name: str = "session") -> None:
        self.block_s = block_s
        self.warn_below = warn_below
        self.name = name
        self._recent: deque[float] = deque(maxlen=window)
        self.low = False

    def note(self, compute_s: float) -> None:
        """One block's compute time (seconds); warns when the margin has just dropped below the threshold."""
        self._recent.append(compute_s)
        if len(self._recent) < self._recent.maxlen:
            return  # the first blocks (warm-up, prefill) say little about the steady state
        margin = self.margin()
        if not self.low and margin < self.warn_below:
            self.low = True
            logger.warning(
                "%s: generation uses %.0f%% of its real-time budget (median %.0f ms of %.0f ms a block): "
                "margin %.0f%%, below %.0f%%; frames will be skipped on any hiccup",
                self.name, 100 * (1 - margin), 1000 * self.median_s(), 1000 * self.block_s, 100 * margin,
                100 * self.warn_below,
            )
        elif self.low and margin >= self.warn_below:
            self.low = False
            logger.info("%s: real-time margin back to %.0f%%", self.name, 100 * margin)

    def median_s(self) -> float | None:
        return float(np.median(self._recent)) if self._recent else None

    def margin(self) -> float | None:
        """1 - median compute / budget (negative: slower than real time); None before the first block."""
        median = self.median_s()
        return None if median is None else 1.0 - median / self.block_s

    def stats(self) -> dict:
        margin = self.margin()
        return {
            "compute_budget_ms": self.block_s * 1000.0,
            "compute_margin_pct": None if margin is None else 100.0 * margin,
            "compute_margin_low": self.low,
        }
