"""The render plan of ``avatar generate``: output size (the reference's area-cap rule) and duration.

Both follow the Live Avatar reference tool (spec §7) so that its users get the sizes and clip counts
they know:

* ``--size "W*H"`` is an *area cap*, not a resolution: the output keeps the photo's aspect ratio,
  with sides in multiples of the engine's divisor (64 for liveavatar, whose VAE x DiT patch grid
  needs it; 16 for lite), and width x height <= W x H.
* One clip is ``infer_frames`` frames at 25 fps. The clip count is what the audio needs
  (``floor(T30 / (1.2 * infer_frames)) + 1``, where T30 is the 30 fps feature count the reference
  derives from wav2vec2's 50 Hz frames), capped by ``--num_clip``. Frames past the audio's end
  are rendered on silence (padding); audio past the last clip is left unused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


class PlanError(ValueError):
    """An option or a combination of options that cannot be rendered. The message is user-facing."""


@dataclass(frozen=True)
class EngineLimits:
    """What an engine accepts, for validating a plan before the engine is even loaded."""

    size_divisor: int  # output sides are multiples of this
    block_frames: int  # infer_frames must be a multiple of this
    min_side: int = 64
    max_side: int = 4096


# liveavatar: 8x VAE downsampling x 2x2 DiT patches, and 3 latent frames = 12 video frames a block.
# lite: a mesh warp at any size; 16 keeps H.264 macroblocks whole. Its block size is small (1-2 frames).
ENGINE_LIMITS = {
    "liveavatar": EngineLimits(size_divisor=64, block_frames=12),
    "lite": EngineLimits(size_divisor=16, block_frames=2, min_side=64),
}

_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[*xX×]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """``"704*384"`` -> (704, 384). Also accepts ``x`` as separator."""
    match = _SIZE_PATTERN.match(str(text))
    if not match:
        raise PlanError(f'--size {text!r} cannot be parsed; write it as "WIDTH*HEIGHT", e.g. "704*384" or "512*512"')
    width, height = int(match.group(1)), int(match.group(2))
    if width <= 0 or height <= 0:
        raise PlanError(f'--size {text!r}: both sides must be positive, e.g. "704*384"')
    return width, height


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def choose_size(image_width: int, image_height: int, max_area: int, divisor: int = 64) -> tuple[int, int]:
    """(width, height) for a photo of the given size under an area cap (reference rule, spec §7).

    Scales from the largest scale that fits the area down to a lower bound (where rounding each side
    up by up to divisor-1 still fits), rounding sides *up* to the divisor, and takes the first pair
    whose product fits. Returns (width, height).
    """
    if image_width <= 0 or image_height <= 0:
        raise PlanError(f"the image has no pixels ({image_width}x{image_height})")
    if max_area < divisor * divisor:
        raise PlanError(
            f"--size area {max_area} is below the smallest frame this engine makes ({divisor}*{divisor}); "
            f'use at least "{divisor}*{divisor}", e.g. "384*256"'
        )
    h0, w0 = image_height, image_width
    area0 = h0 * w0
    if area0 <= max_area:
        s_max, s_min = 1.0, 0.1
    else:
        s_max = math.sqrt(max_area / area0)
        # Solve a*s^2 + b*s + c = 0 for the scale where the rounded-up sides just fit (the reference
        # uses 2ac under the root, not 4ac; kept for identical sizes).
        a = area0
        b = (divisor - 1) * (h0 + w0)
        c = (divisor - 1) ** 2 - max_area
        s_min = (-b + math.sqrt(b * b - 2 * a * c)) / (2 * a)
    for i in range(100):
        s = s_max - (s_max - s_min) * i / 100
        h = _round_up(int(h0 * s), divisor)
        w = _round_up(int(w0 * s), divisor)
        if h * w <= max_area:
            return w, h
    # Nothing fit: keep the aspect ratio, floor to the divisor, never larger than the original.
    scale = min(1.0, math.sqrt(max_area / area0))
    h = max(divisor, int(h0 * scale) // divisor * divisor)
    w = max(divisor, int(w0 * scale) // divisor * divisor)
    while h * w > max_area and (h > divisor or w > divisor):
        if h >= w:
            h -= divisor
        else:
            w -= divisor
    return w, h


def wav2vec_frames(num_samples: int) -> int:
    """Number of 50 Hz wav2vec2 frames for ``num_samples`` at 16 kHz (its conv stack: k/s 10/5, 3/2 x4, 2/2 x2)."""
    length = num_samples
    for kernel, stride in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    return length


def clips_for_audio(num_samples: int, infer_frames: int) -> int:
    """Clips the reference renders for this much 16 kHz audio: floor(T30 / (1.2 * infer_frames)) + 1."""
    t30 = int(0.6 * wav2vec_frames(num_samples))
    return int(t30 // (1.2 * infer_frames)) + 1


@dataclass(frozen=True)
class RenderPlan:
    width: int
    height: int
    clips: int
    clips_for_audio: int  # what the audio alone would need (before --num_clip)
    infer_frames: int
    block_frames: int
    fps: int
    audio_samples: int
    sample_rate: int

    @property
    def frames(self) -> int:
        return self.clips * self.infer_frames

    @property
    def blocks(self) -> int:
        return self.frames // self.block_frames

    @property
    def blocks_per_clip(self) -> int:
        return self.infer_frames // self.block_frames

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps

    @property
    def video_seconds(self) -> float:
        return self.frames / self.fps

    @property
    def audio_seconds(self) -> float:
        return self.audio_samples / self.sample_rate

    @property
    def kept_frames_bytes(self) -> int:
        """Memory the frames take when kept until the end (no online decode), as raw RGB."""
        return self.frames * self.width * self.height * 3

    @property
    def padded_seconds(self) -> float:
        """Video rendered past the audio's end (on silence)."""
        return max(0.0, self.video_seconds - self.audio_seconds)

    @property
    def unused_audio_seconds(self) -> float:
        """Audio past the last clip (cut by --num_clip)."""
        return max(0.0, self.audio_seconds - self.video_seconds)

    def describe(self) -> str:
        lines = [
            f"size: {self.width}*{self.height}",
            f"plan: {self.clips} clip(s) x {self.infer_frames} frames = {self.frames} frames "
            f"= {self.video_seconds:.2f} s of video at {self.fps} fps",
            f"audio: {self.audio_seconds:.2f} s",
        ]
        if self.unused_audio_seconds > 0:
            lines[-1] += (
                f"; {self.unused_audio_seconds:.2f} s unused (the audio needs {self.clips_for_audio} clips; "
                f"raise --num_clip to {self.clips_for_audio} to use it all)"
            )
        else:
            lines[-1] += f"; video padded by {self.padded_seconds:.2f} s of silence after it"
        return "\n".join(lines)


def make_plan(
    *,
    image_size: tuple[int, int],
    max_area: int,
    audio_samples: int,
    infer_frames: int,
    num_clip: int | None,
    limits: EngineLimits,
    fps: int = 25,
    sample_rate: int = 16000,
) -> RenderPlan:
    """Validate the options and compute the plan. Raises PlanError with a message that says what would work."""
    if num_clip is not None and num_clip <= 0:
        raise PlanError(f"--num_clip {num_clip}: must be at least 1 (or leave it out to cover the whole audio)")
    if infer_frames <= 0 or infer_frames % limits.block_frames:
        lower = max(limits.block_frames, infer_frames // limits.block_frames * limits.block_frames)
        raise PlanError(
            f"--infer_frames {infer_frames}: this engine renders blocks of {limits.block_frames} frames, so a clip "
            f"must be a positive multiple of {limits.block_frames} (e.g. {lower} or 48)"
        )
    if audio_samples <= 0:
        raise PlanError("the audio is empty (after trimming); nothing to render")
    width, height = choose_size(image_size[0], image_size[1], max_area, limits.size_divisor)
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise PlanError(
            f"--size area {max_area} gives a {width}*{height} frame for this photo; the engine needs sides "
            f"between {limits.min_side} and {limits.max_side}: use e.g. \"384*256\" (small) up to \"1280*720\""
        )
    needed = clips_for_audio(audio_samples, infer_frames)
    clips = needed if num_clip is None else min(num_clip, needed)
    return RenderPlan(
        width=width,
        height=height,
        clips=clips,
        clips_for_audio=needed,
        infer_frames=infer_frames,
        block_frames=limits.block_frames,
        fps=fps,
        audio_samples=audio_samples,
        sample_rate=sample_rate,
    )
