"""A prepared avatar (``LiveAvatar``) and the per-session block generator of the liveavatar engine."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from live_avatar.core.contract import AudioBlock, AvatarError

from .vae_stream import to_uint8_frames_later

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .engine import LiveAvatarEngine


@dataclass
class LiveAvatar:
    """A prepared portrait: the engine-size image and its latents (on the engine's device)."""

    image: np.ndarray  # uint8 [H, W, 3], the engine-size crop
    pixels: torch.Tensor  # [3, H, W] in [-1, 1]
    reference_latent: torch.Tensor  # [16, 1, h, w]
    motion_latents: torch.Tensor  # [16, 19, h, w]


@dataclass
class BlockStageTimes:
    """Seconds spent per stage of the last block (device-synchronised only when ``sync_timing``)."""

    audio_s: float = 0.0
    dit_s: float = 0.0
    vae_s: float = 0.0
    refresh_s: float = 0.0
    prefill_s: float = 0.0
    total_s: float = 0.0
    extra: dict = field(default_factory=dict)


FIRST_BLOCKS_KEPT = 5  # the ring fills over the first 4 blocks; the sink refresh comes before the 5th


def _stage_ms(t: BlockStageTimes) -> dict[str, object]:
    out: dict[str, object] = {"audio": 1000 * t.audio_s, "sink_refresh": 1000 * t.refresh_s, "dit": 1000 * t.dit_s,
                              "vae": 1000 * t.vae_s, "total": 1000 * t.total_s}
    if t.extra.get("vae_parts_s"):  # frames made in parts: each part's arrival on the host within the VAE stage
        out["vae_parts"] = [round(1000 * s, 1) for s in t.extra["vae_parts_s"]]
    return out


class LiveAvatarGenerator:
    """BlockGenerator of one session: audio window -> DiT block -> streaming VAE -> uint8 frames."""

    def __init__(self, engine: "LiveAvatarEngine", avatar: LiveAvatar, prompt: str | None, *, sync_timing: bool = False):
        from .config import LatentGeometry
        from .sampler import ClipNoise

        self.engine = engine
        parts = engine.parts
        streaming = parts.model_config.streaming
        self.block_frames = streaming.video_frames_per_block
        self.context_samples = parts.audio.context_samples
        self.lookahead_samples = parts.audio.lookahead_samples
        self.sync_timing = sync_timing
        self.avatar = avatar
        self.timings = BlockStageTimes()
        self._closed = False
        w, h = engine.size
        self.stepper, self.stepper_reused = engine.take_stepper(LatentGeometry.from_pixels(h, w))
        self.noise = ClipNoise(
            engine.options.seed, self.stepper.clip_noise_shape, streaming.latent_frames_per_block,
            device=engine.device, dtype=engine.dtype,
        )
        self.video = parts.codec.stream()
        # the host copies of a block's frames, beside the decode of its later latent frames (generate_parts)
        self._copy_stream = torch.cuda.Stream(engine.device) if engine.device.type == "cuda" else None
        self._prompt = prompt if prompt else engine.options.prompt
        self._started = False
        self._first_latent: torch.Tensor | None = None
        # last frames in [-1, 1] for the "reencode" sink refresh (motion = VAE(last 73 frames)); only then
        self._recent = deque(maxlen=parts.codec.config.motion_frames if engine.options.sink_refresh == "reencode" else 0)
        self.blocks_done = 0
        self.first_blocks_ms: list[dict[str, float]] = []  # stages of the session's first blocks (engine_stats)
        self._pending_change: tuple | None = None  # (avatar, prompt) for the next clip boundary
        self._compiles_seen = engine.compiles_since_ready()

    def _sync(self) -> float:
        if self.sync_timing and self.engine.device.type == "cuda":
            # this thread's stream only: a VAE decode on its own stream (vae_overlap.py) is not this stage's
            torch.cuda.current_stream(self.engine.device).synchronize()
        return time.perf_counter()

    def start(self) -> None:
        """Sink prefill + VAE priming (done lazily before the first block; the benchmark times it alone)."""
        t0 = self._sync()
        # outside the compute lock: on an encoder kept on the CPU a new prompt takes seconds, and other
        # sessions' blocks must not wait for it
        context = self.engine.parts.text.encode(self._prompt)
        with self.engine.compute_lock, torch.inference_mode():
            self._check_open()
            self.stepper.prefill(self.avatar.reference_latent, self.avatar.motion_latents, context)
            self.video.start(self.avatar.motion_latents)
        self._recent.clear()
        self._recent.extend(self.avatar.pixels[:, None].unbind(1) * self._recent.maxlen)
        self._started = True
        self.timings.prefill_s = self._sync() - t0

    def _check_open(self):
        """(compute lock held) The stepper, unless the session was closed: a closed session's stepper may
        already be another session's (``reuse_sessions``), and that session's prefill waits for this lock."""
        if self._closed:
            raise RuntimeError("generator is closed")
        return self.stepper

    def _refresh_sink(self) -> None:
        """Before the first block of clip 1: rebuild the sink (online-decode semantics, spec §3.4 / golden README)."""
        mode = self.engine.options.sink_refresh
        if mode == "none" or self._first_latent is None:
            return
        motion = None
        if mode == "reencode":
            clip = torch.stack(list(self._recent), dim=1)  # [3, 73, H, W]
            motion = self.engine.parts.codec.encode(clip)
        self.stepper.refresh_sink(self._first_latent, motion)
        self._first_latent = None

    def generate(self, block: AudioBlock) -> np.ndarray:
        parts = list(self.generate_parts(block))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def generate_parts(self, block: AudioBlock) -> Iterator[np.ndarray]:
        """The block's frames a latent frame's worth (4) at a time, each as soon as it is on the host: the
        VAE decodes latent by latent, so the first 4 frames can go out ~2/3 of a decode earlier than the
        whole block (at 320x512 on an H200 ~50 ms of every frame's delay, the VAE taking 77 ms). Each
        latent's decode is queued only after the previous part is out: queuing all three first held the
        first part back to the block's end in a GPU live run (likely because the compiled, ungraphed
        decoder takes about as long to launch as to run)."""
        latents, t = self._denoise(block)
        t3 = time.perf_counter()
        parts_s = t.extra.setdefault("vae_parts_s", [])  # when each part was on the host, from the decode's start
        parts = self.video.iter_block_parts(latents)
        while True:
            # the lock per part: another session's block may queue its work while this one's part is copied
            with self.engine.compute_lock, torch.inference_mode():
                self._check_open()
                part = next(parts, None)
                if part is None:
                    break
                fetch = self._queue_part(part, self._copy_stream)
            frames = fetch().numpy()
            parts_s.append(time.perf_counter() - t3)
            yield frames
        t.vae_s = time.perf_counter() - t3
        self._finish_block(t)

    def _denoise(self, block: AudioBlock) -> tuple[torch.Tensor, BlockStageTimes]:
        """Audio features, the clip-boundary sink work and the block's four DiT calls -> clean latents."""
        if self._closed:
            raise RuntimeError("generator is closed")
        if block.num_frames != self.block_frames:
            raise ValueError(f"liveavatar blocks have {self.block_frames} frames, got {block.num_frames}")
        if not self._started:
            self._apply_change(rebuild_sink=False)  # before the start: the prefill uses it
            self.start()
        t = BlockStageTimes(prefill_s=self.timings.prefill_s if self.blocks_done == 0 else 0.0)
        t_start = self._sync()
        with self.engine.compute_lock, torch.inference_mode():
            stepper = self._check_open()
            feats = self.engine.parts.audio.block_features(block)  # [25, D, 12] float32
            t1 = self._sync()
            t.audio_s = t1 - t_start
            streaming = self.engine.parts.model_config.streaming
            if self._pending_change is not None and stepper.block_index % streaming.blocks_per_clip == 0:
                self._apply_change(rebuild_sink=True)
            elif stepper.block_index == streaming.blocks_per_clip:
                self._refresh_sink()
            t2 = self._sync()
            t.refresh_s = t2 - t1
            latents = stepper.step_block(feats[None].to(self.engine.dtype), self.noise.block(stepper.block_index))
            if stepper.block_index == 1:
                self._first_latent = latents[:, :1].clone()
            t.dit_s = self._sync() - t2
        return latents, t

    def _queue_part(self, pixels: torch.Tensor, copy_stream) -> Callable[[], torch.Tensor]:
        """Queue one decoded part's uint8 conversion; returns the function that waits for it on the host."""
        self._recent.extend(pixels.unbind(1))
        return to_uint8_frames_later(pixels, copy_stream)

    def _decode(self, video, latents: torch.Tensor, t: BlockStageTimes) -> np.ndarray:
        """The streaming VAE decode of a block's latents -> uint8 frames, all of them at once."""
        t3 = time.perf_counter()
        fetches = [self._queue_part(part, None) for part in video.decode_block_parts(latents)]
        frames = np.concatenate([fetch().numpy() for fetch in fetches])
        t.vae_s = time.perf_counter() - t3
        return frames

    def _finish_block(self, t: BlockStageTimes) -> None:
        t.total_s = t.audio_s + t.refresh_s + t.dit_s + t.vae_s
        self.timings = t
        if len(self.first_blocks_ms) < FIRST_BLOCKS_KEPT:  # a session's start: the first frame's cost
            self.first_blocks_ms.append(_stage_ms(t))
        self.blocks_done += 1
        self._note_compiles()

    def _note_compiles(self) -> None:
        """Warn when graphs were compiled after the engine's warm-up: each one stalled a live session."""
        compiled = self.engine.compiles_since_ready()
        if compiled > self._compiles_seen and not self.engine.warming_up:
            if self.engine.warmup_report is not None:
                logger.warning("liveavatar: %d graph(s) compiled after the warm-up (%d in all since ready), during a "
                               "session: its frames stalled meanwhile (a size or call the warm-up did not run?)",
                               compiled - self._compiles_seen, compiled)
            else:  # a benchmark's or a warmup=false engine's first sessions compile by design: worth a note only
                logger.info("liveavatar: %d graph(s) compiled during a session of an engine that ran no warm-up "
                            "(%d in all): expected in its first sessions at a size", compiled - self._compiles_seen, compiled)
            self._compiles_seen = compiled

    def engine_stats(self) -> dict[str, Any]:
        """The last block's stages (ms) and the graphs compiled since the engine was ready (should stay 0)."""
        return {
            "last_block_ms": _stage_ms(self.timings),
            "first_blocks_ms": self.first_blocks_ms,
            "stepper_reused": self.stepper_reused,  # reuse_sessions: nothing recorded or allocated at its start
            "stage_times_synchronised": self.sync_timing,
            "compiles_since_ready": self.engine.compiles_since_ready(),
        }

    def change_avatar(self, avatar: LiveAvatar | None = None, prompt: str | None = None) -> int:
        """Switch portrait and/or prompt (None: unchanged; prompt "": the default) at the next clip
        boundary, where the sink is rebuilt from the new reference (and text); the KV rings carry
        the motion across. Returns the frames from the next block until it shows."""
        if avatar is not None:
            if not isinstance(avatar, LiveAvatar):
                raise AvatarError("not a liveavatar avatar (prepare it with this engine's prepare_avatar)")
            if avatar.image.shape != self.avatar.image.shape:
                raise AvatarError("the new avatar was prepared for another frame size")
        if self._pending_change is not None:  # two changes before a boundary: the newer one wins, merged
            avatar = avatar if avatar is not None else self._pending_change[0]
            prompt = prompt if prompt is not None else self._pending_change[1]
        self._pending_change = (avatar, prompt)
        if prompt is not None:  # encoded now (cached), not under the compute lock at the clip boundary
            self.engine.parts.text.encode(prompt if prompt else self.engine.options.prompt)
        stepper = self.stepper  # None once closed (close() does not wait for the compute lock)
        if not self._started or stepper is None:
            return 0
        per_clip = self.engine.parts.model_config.streaming.blocks_per_clip
        return (-stepper.block_index) % per_clip * self.block_frames

    def _apply_change(self, *, rebuild_sink: bool) -> None:
        if self._pending_change is None:
            return
        avatar, prompt = self._pending_change
        self._pending_change = None
        if avatar is not None:
            self.avatar = avatar
        if prompt is not None:
            self._prompt = prompt if prompt else self.engine.options.prompt
        if rebuild_sink:  # (compute lock held) the sink's K/V depend on the reference and the text
            if prompt is not None:
                self.stepper.set_text(self.engine.parts.text.encode(self._prompt))
            self.stepper.refresh_sink(self.avatar.reference_latent, self.avatar.motion_latents)
            self._first_latent = None  # replaces clip 1's refresh from the first latent

    def reset_motion_to_idle(self) -> None:
        """Nothing to reset: the DiT has no explicit mouth state; the next blocks follow the (silent) audio."""

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(
            "the liveavatar engine cannot save a session for --resume: its state is the GPU KV rings and sink "
            f"(~{self.stepper.state_nbytes / 1e9:.1f} GB); re-run the clip instead"
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError("the liveavatar engine cannot resume a session (see state_dict)")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stepper, self.stepper = self.stepper, None
        self.engine.return_stepper(stepper)  # kept for the next session (reuse_sessions), else its memory goes
        self.video = None
        self._recent.clear()
        self.engine._release_session()
