"""The engine contract (DESIGN.md §3): what every engine offers and what the runtime hands around.

Two layers:

* ``Engine`` — created once per process; owns models/devices; prepares avatars; opens sessions.
* ``BlockGenerator`` — the engine-specific, *stateful* part of one session. It turns one block of
  audio (a window with left context and lookahead) into ``block_frames`` video frames and keeps its
  motion state (rig pose / KV ring / VAE caches) for the next block. It runs in a worker thread and
  never touches asyncio.

The generic runtime (``live_avatar.core.stream.StreamSession``) drives a ``BlockGenerator`` on its own
schedule and implements the session API of DESIGN.md §3 (``push_audio``, ``end_of_speech``,
``interrupt``, ``chunks``, ``close``). Engines return a ``StreamSession`` from ``open_session``.

Timeline convention (shared by runtime, server and offline generation):
    frame k of a session covers input samples [k*S, (k+1)*S) of the session's 16 kHz audio
    timeline, with S = sample_rate // fps (640 at 16 kHz / 25 fps). Its RTP pts is k * 3600.
All times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class AvatarError(ValueError):
    """A portrait that cannot be used (no face found, unreadable, too small...). Message is user-facing."""


class EngineBusyError(RuntimeError):
    """The engine is at capacity and refuses another real-time session."""


@dataclass(frozen=True)
class AudioBlock:
    """Audio handed to ``BlockGenerator.generate`` for one block of frames.

    ``samples`` covers timeline samples [start_sample - context, end_sample + lookahead) where
    start_sample = first_frame * S and end_sample = (first_frame + num_frames) * S. Samples before
    the session start are zeros. ``context``/``lookahead`` are the generator's own
    ``context_samples``/``lookahead_samples`` (the runtime always provides exactly those).
    """

    samples: np.ndarray  # float32 mono, 16 kHz
    first_frame: int
    num_frames: int
    context: int
    lookahead: int
    speech: np.ndarray  # bool [num_frames]: VAD decision per frame
    end_of_speech: bool = False  # the producer said the utterance ended at or before this block

    def frame_samples(self, samples_per_frame: int) -> np.ndarray:
        """The block's own samples (without context/lookahead)."""
        return self.samples[self.context : self.context + self.num_frames * samples_per_frame]


# Under this share of a block's real-time budget left free (its frames / fps, minus the compute), jitter
# costs frames: live sessions and the start-up warm-up warn, and the preflight suggests sizes that keep it.
LOW_COMPUTE_MARGIN = 0.10


@dataclass
class BlockTimings:
    audio_ready_at: float  # when the last sample this block needs had arrived
    started_at: float  # when generation of the block started
    finished_at: float  # when its frames were ready
    compute_s: float  # thread CPU/GPU time spent (wall time of generate())


@dataclass
class Chunk:
    """Frames of one block plus the speech audio aligned to them."""

    frames: np.ndarray  # uint8 [N, H, W, 3] RGB
    audio: np.ndarray  # float32 mono [N * S] at 16 kHz: the input speech of exactly these frames
    first_frame: int  # timeline index of frames[0]; pts = first_frame * 3600
    speech: np.ndarray  # bool [N]
    timings: BlockTimings
    # Arrival time of the packet in which a speech onset (after >= 0.5 s of silence) started, if the
    # first frame generated from that onset is in this chunk; used for speech_to_lips_latency.
    speech_onset_arrivals: list[float] = field(default_factory=list)
    # That frame's index in the chunk, one per arrival (empty: the first frame): in a block of 12 the
    # onset's own frame goes out up to 11 frames after the block's first.
    speech_onset_offsets: list[int] = field(default_factory=list)
    # False for a part of a block that its generator makes in parts (generate_parts): the block's
    # compute time is reported with its last part
    ends_block: bool = True
    # The same input speech at full band (the producer's own 48 kHz, StreamSession's full_band
    # copy) for the outgoing audio; None when the producer gave only the engine's rate.
    full_band_audio: np.ndarray | None = None  # float32 mono [N * S * full_band_rate / sample_rate]
    full_band_rate: int | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def onsets_at(self, i: int) -> list[float]:
        """The arrival times of the speech onsets that frame ``i`` is the first to show."""
        if not self.speech_onset_offsets:
            return list(self.speech_onset_arrivals) if i == 0 else []
        return [t for t, offset in zip(self.speech_onset_arrivals, self.speech_onset_offsets, strict=True)
                if min(offset, self.num_frames - 1) == i]


@runtime_checkable
class BlockGenerator(Protocol):
    """Engine-specific stateful frame generator for one session (runs in a worker thread)."""

    block_frames: int
    context_samples: int
    lookahead_samples: int

    def generate(self, block: AudioBlock) -> np.ndarray:
        """Return uint8 [block.num_frames, H, W, 3]. Carries motion state to the next call."""
        ...

    def reset_motion_to_idle(self) -> None:
        """Called on interrupt: the next block starts from where motion is, mouth closing smoothly."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Motion state as plain Python/numpy values (picklable), for ``avatar generate --resume``."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # Optional: ``change_avatar(avatar=None, prompt=None) -> int`` switches the portrait and/or the
    # prompt mid-session (None: unchanged; prompt "": the engine's default). The runtime calls it
    # between blocks; it returns how many frames after the next block's first frame the change
    # shows (0: at once). A generator without it cannot change either mid-session.
    #
    # Optional: ``generate_parts(block) -> Iterator[np.ndarray]`` yields ``generate(block)``'s frames in
    # order, in parts, each as soon as it is ready (liveavatar: 4 frames per latent frame as its VAE
    # decodes them); the live runtime then sends a block's first frames before its last exist.

    def close(self) -> None: ...


class ChangeNotSupported(RuntimeError):
    """The engine cannot change the avatar or prompt of a running session (message is user-facing)."""


@runtime_checkable
class Engine(Protocol):
    name: str
    fps: int
    size: tuple[int, int]  # (width, height) of output frames
    block_frames: int
    sample_rate: int  # 16000: rate of AudioBlock.samples
    capacity: int  # real-time sessions this process can hold

    def prepare_avatar(self, image: np.ndarray) -> Any:
        """RGB uint8 [H, W, 3] -> engine-specific avatar (rig, latents...). Raises AvatarError."""
        ...

    def new_generator(self, avatar: Any, prompt: str | None = None, **options: Any) -> BlockGenerator:
        """A fresh generator for one session (offline generation drives it directly)."""
        ...

    def open_session(self, avatar: Any, prompt: str | None = None, **options: Any):
        """``StreamSession(self.new_generator(...), fps=..., sample_rate=...)``: the live session."""
        ...

    def close(self) -> None: ...
