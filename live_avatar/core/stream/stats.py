"""A ``StreamSession``'s counters and its ``stats()`` dictionary (read by the server, its stats
endpoint and the tests: the keys are an interface)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class SessionCounters:
    blocks: int = 0
    idle_blocks: int = 0
    frames: int = 0  # generated
    skipped: int = 0  # frames skipped to catch up, never generated
    silent_skipped: int = 0  # of those, frames of silent blocks skipped early (silence_skip_late_s)
    padded: int = 0  # samples of silence padded for late input
    late_dropped: int = 0  # samples of live input dropped (already replaced by padding)
    onsets: int = 0
    interrupts: int = 0
    chunks_dropped: int = 0  # by interrupts

    def note_block(self, num_frames: int, speech: bool) -> None:
        self.blocks += 1
        self.frames += num_frames
        if not speech:
            self.idle_blocks += 1


def session_stats(
    counters: SessionCounters,
    *,
    state: str,
    error: str | None,
    buffered: bool,
    block_frames: int,
    sample_rate: int,
    next_frame: int,
    played_frame: int,
    compute_s: Iterable[float],
    first_out_s: Iterable[float],
    playout_slack_s: float | None,
    output_queue: int,
    output_queue_max: int,
    input_backlog_samples: int,
) -> dict:
    c = counters
    compute_ms = np.asarray(compute_s, np.float64) * 1000.0
    first_out_ms = np.asarray(first_out_s, np.float64) * 1000.0
    return {
        "state": state,
        "error": error,
        "mode": "buffered" if buffered else "live",
        "block_frames": block_frames,
        "blocks": c.blocks,
        "idle_blocks": c.idle_blocks,
        "frames_generated": c.frames,
        "frames_skipped": c.skipped,
        "silent_frames_skipped": c.silent_skipped,
        "next_frame": next_frame,
        "played_frame": played_frame,
        "compute_ms_p50": float(np.median(compute_ms)) if compute_ms.size else None,
        "compute_ms_max": float(compute_ms.max()) if compute_ms.size else None,
        # start to the block's first frames out: below compute_ms_p50 when a block goes out in parts
        "first_out_ms_p50": float(np.median(first_out_ms)) if first_out_ms.size else None,
        "playout_slack_ms": None if playout_slack_s is None else playout_slack_s * 1000.0,
        "output_queue": output_queue,
        "output_queue_max": output_queue_max,
        "input_backlog_s": max(input_backlog_samples, 0) / sample_rate,
        "padded_silence_s": c.padded / sample_rate,
        "late_input_dropped_s": c.late_dropped / sample_rate,
        "speech_onsets": c.onsets,
        "interrupts": c.interrupts,
        "chunks_dropped_by_interrupt": c.chunks_dropped,
    }
