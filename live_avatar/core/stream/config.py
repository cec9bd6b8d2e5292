"""Configuration of the chunk runtime (``StreamSession``); see DESIGN.md §2 for the timing model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from live_avatar.core.audio.vad import VadConfig
from live_avatar.core.config_loading import from_mapping


@dataclass
class StreamConfig:
    # False (live): a WebRTC mic; the timeline is anchored to the wall clock and input that is late
    # at a block's deadline is replaced by silence. True (buffered): a producer (TTS, agent) pushes
    # faster than real time; its audio is queued and played in full, in order.
    buffered: bool = False
    # How long past its nominal arrival a block waits for late input before padding silence.
    input_jitter_s: float = 0.06
    # Slack between the first chunk being ready and its playout; each later block is due
    # first_ready + playout_margin_s + frames/fps. A worker more than one block behind that skips.
    # Set it to the consumer's playout delay (the server's playout_delay_ms, 40 ms by default).
    playout_margin_s: float = 0.04
    # Rate of the optional full-band copy of the input (push_audio(..., full_band=...)) that chunks
    # carry for the outgoing audio; a multiple of the engine's sample rate.
    full_band_rate: int = 48000
    # Buffered: how far ahead of its playout a block may be generated (at least one block), so
    # an eager consumer never holds more than a fraction of a second of not-yet-due frames.
    buffered_lead_s: float = 0.2
    # Ready chunks waiting for the consumer; a full queue pauses the worker (back-pressure).
    output_queue_chunks: int = 8
    # Live: arrived audio not yet generated beyond which the worker skips ahead (memory bound when
    # the consumer stalls or the sender's clock runs fast).
    max_live_backlog_s: float = 2.0
    # Live: a block that would reach its playout slot more than this late is skipped if it (and its
    # lookahead) is silence, so a generator slower than real time loses pauses instead of words
    # (a still face for a block in a pause, not a lost word later). None: never; the catch-up past a
    # whole block late skips whatever comes. 0.12 s: a quarter of the diffusion engine's block.
    silence_skip_late_s: float | None = 0.12
    # Buffered: pushed but not yet generated audio beyond which push_audio raises BufferFullError.
    max_buffered_audio_s: float = 120.0
    # Samples of compute history kept for the p50/max statistics.
    stats_window: int = 256
    # How long close() waits for a generate() call in progress.
    close_timeout_s: float = 10.0
    # Blocks submitted and not yet collected, for a generator that pipelines (submit()/collect(), e.g.
    # liveavatar over --num_gpus_dit N): block k+1 enters the pipe as soon as its audio is there, while
    # block k is still further down. None: the generator's pipeline_depth; 1: one block at a time.
    max_blocks_in_flight: int | None = None
    vad: VadConfig = field(default_factory=VadConfig)

    def __post_init__(self) -> None:
        if self.input_jitter_s < 0 or self.playout_margin_s < 0 or self.buffered_lead_s < 0:
            raise ValueError("input_jitter_s, playout_margin_s and buffered_lead_s must be >= 0")
        if self.output_queue_chunks < 1:
            raise ValueError(f"output_queue_chunks must be >= 1, got {self.output_queue_chunks}")
        if self.max_live_backlog_s <= 0 or self.max_buffered_audio_s <= 0:
            raise ValueError("max_live_backlog_s and max_buffered_audio_s must be > 0")
        if self.stats_window < 1 or self.close_timeout_s <= 0:
            raise ValueError("stats_window must be >= 1 and close_timeout_s > 0")
        if self.silence_skip_late_s is not None and self.silence_skip_late_s < 0:
            raise ValueError(f"silence_skip_late_s must be >= 0 or None, got {self.silence_skip_late_s}")
        if self.max_blocks_in_flight is not None and self.max_blocks_in_flight < 1:
            raise ValueError(f"max_blocks_in_flight must be >= 1, got {self.max_blocks_in_flight}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, source: str = "stream options") -> "StreamConfig":
        """From a YAML section (e.g. ``stream:`` of a server config); unknown keys are errors."""
        return from_mapping(cls, values, source)
