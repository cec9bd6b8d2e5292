"""Progress reporting for offline renders: a tqdm bar on stderr with clips, fps, ETA and peak RSS."""

from __future__ import annotations

import resource
import sys
import time


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RenderProgress:
    """Clips done / total, video frames per second, ETA and peak memory. Quiet when disabled."""

    def __init__(self, total_clips: int, done_clips: int = 0, *, frames_per_clip: int, enabled: bool = True):
        self.frames_per_clip = frames_per_clip
        self.started = time.monotonic()
        self.frames_rendered = 0  # in this run (resumed clips excluded from the speed)
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_clips,
                initial=done_clips,
                unit="clip",
                file=sys.stderr,
                dynamic_ncols=True,
                # A log file gets a line every 10 s, a terminal a live bar.
                mininterval=0.5 if sys.stderr.isatty() else 10.0,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} clips [{elapsed}<{remaining}{postfix}]",
            )

    @property
    def fps(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.frames_rendered / elapsed if elapsed > 0 else 0.0

    def clip_done(self) -> None:
        self.frames_rendered += self.frames_per_clip
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.fps:.1f} fps, peak RSS {peak_rss_mb():.0f} MB", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
