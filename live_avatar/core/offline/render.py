"""Drive an engine's ``BlockGenerator`` over a whole audio file, offline (no real-time pacing).

Blocks are cut from the prepared audio with ``live_avatar.core.audio.timeline.block_window`` (reading
the file, not holding it), each frame gets its VAD decision from the same detector the live path
uses, and finished clips go to the ``PartialVideo``. After every finished clip the resume state
(generator motion state, VAD state, clip index) is saved, so an interrupted render continues from
the last finished clip with the same motion, i.e. without a visible jump at the seam.

With ``online_decode`` each block is encoded as soon as it exists (memory flat whatever the
length). Without it, frames are kept until the end like the reference tool; an interruption
(Ctrl-C, an exception, SIGTERM) still writes the finished clips, ``kill -9`` loses them.
"""

from __future__ import annotations

import copy
import itertools
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from live_avatar.core.audio.timeline import block_window
from live_avatar.core.audio.vad import VoiceActivityDetector
from live_avatar.core.contract import AudioBlock, BlockGenerator
from live_avatar.core.offline.audio_prep import PreparedAudio
from live_avatar.core.offline.plan import RenderPlan
from live_avatar.core.offline.resume import RenderState, save_state
from live_avatar.core.offline.video_writer import PartialVideo


class FileSamples:
    """Read-only 1-D view of the prepared audio file, enough of the ndarray interface for block_window."""

    ndim = 1

    def __init__(self, audio: PreparedAudio):
        self._audio = audio
        self.shape = (audio.num_samples,)

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(self.shape[0])
        if step != 1:
            raise IndexError("only contiguous slices are supported")
        return self._audio.read(start, stop)


@dataclass
class RenderCheckpoint:
    """What the state file needs besides the generator: where we are and how to find the partial file."""

    fingerprint: str
    options: dict[str, Any]
    state_path: Path


class OfflineRenderer:
    def __init__(
        self,
        generator: BlockGenerator,
        audio: PreparedAudio,
        plan: RenderPlan,
        partial: PartialVideo,
        checkpoint: RenderCheckpoint,
        *,
        online_decode: bool,
        vad: VoiceActivityDetector | None = None,
        on_clip_done: Callable[[int], None] | None = None,
        save_generator_state: bool = True,
    ):
        self.generator = generator
        self.audio = audio
        self.samples = FileSamples(audio)
        self.plan = plan
        self.partial = partial
        self.checkpoint = checkpoint
        self.online_decode = online_decode
        self.vad = vad or VoiceActivityDetector(plan.sample_rate, plan.samples_per_frame)
        self.on_clip_done = on_clip_done or (lambda clip: None)
        # False for engines whose state cannot be saved (liveavatar: GPU KV rings): the state file
        # then only marks the render as unfinished, and --resume refuses it.
        self.save_generator_state = save_generator_state
        self.block_frames = int(generator.block_frames)
        if plan.infer_frames % self.block_frames:
            raise ValueError(f"infer_frames {plan.infer_frames} is not a multiple of block_frames {self.block_frames}")

    # -- blocks --------------------------------------------------------------------------------
    def make_block(self, first_frame: int, num_frames: int) -> AudioBlock:
        spf = self.plan.samples_per_frame
        context, lookahead = int(self.generator.context_samples), int(self.generator.lookahead_samples)
        samples = block_window(self.samples, first_frame, num_frames, spf, context, lookahead)
        own = samples[context : context + num_frames * spf]
        speech = np.array([self.vad.process(own[i * spf : (i + 1) * spf]).speech for i in range(num_frames)], bool)
        audio_end_frame = -(-self.audio.num_samples // spf)
        return AudioBlock(
            samples=samples,
            first_frame=first_frame,
            num_frames=num_frames,
            context=context,
            lookahead=lookahead,
            speech=speech,
            end_of_speech=first_frame + num_frames >= audio_end_frame,
        )

    def _generate_clip(self, clip: int):
        """Yield (frames, speech audio) block by block for one clip (from the stream ``run`` opened)."""
        return itertools.islice(self._stream, self.plan.infer_frames // self.block_frames)

    def _blocks(self, start_clip: int):
        """(frames, speech audio) of every block from ``start_clip`` on, in order. A generator with
        ``submit``/``collect`` (the liveavatar step pipeline) gets ``pipeline_depth`` blocks in flight, so block
        k+1 enters the pipe while block k is still in it."""
        spf, infer = self.plan.samples_per_frame, self.plan.infer_frames
        blocks = (self.make_block(first, self.block_frames)
                  for first in range(start_clip * infer, self.plan.clips * infer, self.block_frames))
        depth = int(getattr(self.generator, "pipeline_depth", 1))
        if depth <= 1:
            for block in blocks:
                yield self._checked(self.generator.generate(block), block), block.frame_samples(spf)
            return
        in_flight: deque[AudioBlock] = deque()
        for block in itertools.chain(blocks, [None] * depth):
            if block is not None:
                self.generator.submit(block)
                in_flight.append(block)
            if in_flight and (block is None or len(in_flight) >= depth):
                done = in_flight.popleft()
                yield self._checked(self.generator.collect(), done), done.frame_samples(spf)

    @staticmethod
    def _checked(frames, block: AudioBlock) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[0] != block.num_frames or frames.ndim != 4:
            raise RuntimeError(
                f"the engine returned frames {frames.dtype}{list(frames.shape)} for a {block.num_frames}-frame block"
            )
        return frames

    # -- state ---------------------------------------------------------------------------------
    def _generator_state(self) -> dict | None:
        return copy.deepcopy(self.generator.state_dict()) if self.save_generator_state else None

    def _save(self, clips_done: int, partial_bytes: int, generator_state: dict | None, vad_state: Any) -> None:
        save_state(
            self.checkpoint.state_path,
            RenderState(
                fingerprint=self.checkpoint.fingerprint,
                options=self.checkpoint.options,
                clips_done=clips_done,
                frames_done=clips_done * self.plan.infer_frames,
                partial_bytes=partial_bytes,
                generator_state=generator_state,
                vad_state=vad_state,
            ),
        )

    # -- main loop -----------------------------------------------------------------------------
    def run(self, start_clip: int = 0) -> None:
        """Render clips [start_clip, plan.clips); KeyboardInterrupt/exceptions propagate after the
        finished clips and their state are on disk."""
        self._stream = self._blocks(start_clip)
        if self.online_decode:
            return self._run_online(start_clip)
        return self._run_kept(start_clip)

    def _run_online(self, start_clip: int) -> None:
        try:
            for clip in range(start_clip, self.plan.clips):
                self.partial.begin_clip(clip * self.plan.infer_frames, self.plan.infer_frames)
                for frames, speech_audio in self._generate_clip(clip):
                    self.partial.add_frames(frames, speech_audio)
                size = self.partial.end_clip()
                self._save(clip + 1, size, self._generator_state(), self.vad)
                self.on_clip_done(clip)
        finally:
            self.partial.abort_clip()

    def _run_kept(self, start_clip: int) -> None:
        kept: list[tuple[np.ndarray, np.ndarray]] = []  # (frames, audio) per finished clip
        snapshot = None  # generator + VAD state at the end of the last finished clip
        try:
            for clip in range(start_clip, self.plan.clips):
                pieces = list(self._generate_clip(clip))
                kept.append((np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])))
                snapshot = (self._generator_state(), copy.deepcopy(self.vad))
                self.on_clip_done(clip)
        finally:
            # Normal end or interruption: write what is finished, then the state that matches it.
            for index, (frames, speech_audio) in enumerate(kept):
                clip = start_clip + index
                self.partial.begin_clip(clip * self.plan.infer_frames, self.plan.infer_frames)
                self.partial.add_frames(frames, speech_audio)
                size = self.partial.end_clip()
                kept[index] = (frames[:0], speech_audio[:0])  # release memory as we go
                if index == len(kept) - 1 and snapshot is not None:
                    self._save(clip + 1, size, snapshot[0], snapshot[1])
