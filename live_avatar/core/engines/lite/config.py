"""Configuration of the lite engine: dataclasses with defaults, overridable from configs/engines/lite.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from live_avatar.core.config_loading import from_mapping, merge_mappings, read_yaml_mapping
from live_avatar.resources import config_path

DEFAULT_CONFIG_PATH = config_path("engines", "lite.yaml")


@dataclass
class FramingConfig:
    face_height_fraction: float = 0.30  # face (forehead to chin) height / frame height
    face_center_y: float = 0.42  # where the face centre sits, as a fraction of frame height
    size_multiple: int = 16  # output sides are multiples of this


@dataclass
class DetectionConfig:
    min_confidence: float = 0.5
    detect_max_side: int = 1024  # the detector sees the image downscaled to this
    tile_side: int = 512  # ... and, if that finds nothing, overlapping tiles of this size
    tile_max_side: int = 2048  # of the image downscaled to this
    haar_max_side: int = 1600
    mesh_crop_side: int = 480  # FaceMesh runs on a face crop resized to this (upscales small faces)
    mesh_crop_scale: float = 2.2  # crop side / detected box side
    min_face_pixels: int = 24  # smaller faces are refused: too little detail to animate


@dataclass
class RigConfig:
    mouth_open_max: float = 0.26  # lower-lip drop at full opening, in mouth widths
    chin_follow: float = 0.75  # chin drop / lower-lip drop (lips open by themselves too)
    upper_lip_lift: float = 0.12  # upper-lip rise / lower-lip drop
    round_inward: float = 0.09  # mouth-corner travel towards the centre when rounded, mouth widths
    spread_outward: float = 0.06
    lower_lid_lift: float = 0.12  # the lower lid rises this share of the eye opening in a blink
    lid_skin_bias: float = 0.6  # a closing lid stretches the skin under the brow more than the lashes (0..0.9)
    brow_raise: float = 0.12  # brow travel, in brow-to-eye distances
    field_step: int = 2  # the rig's displacement fields are interpolated on this grid, then smoothed
    field_blur_px: float = 1.5
    head_mask_falloff: float = 0.45  # in face heights: how far head motion fades into the background


@dataclass
class MotionConfig:
    context_ms: float = 10.0  # audio before each frame used by the analysis window
    lookahead_ms: float = 0.0  # audio after each frame; each 20 ms costs a packet of speech-to-lips latency
    silence_db: float = -50.0  # below this (dBFS RMS) the mouth target is closed
    noise_window_s: float = 1.2  # the noise floor is the quietest frame in this window
    noise_margin_db: float = 8.0  # speech must be this much above the noise floor
    level_range_db: float = 24.0  # opening goes 0 -> 1 over this range below the running speech peak
    initial_peak_db: float = -18.0
    peak_decay_db_per_s: float = 3.0
    open_gain: float = 0.75
    open_exponent: float = 1.4
    hiss_closure: float = 0.55  # how much fricatives (s, f, sh) close the mouth
    shape_hz: float = 350.0  # centroid offset from the speaker's mean that gives a fully round/spread mouth
    centroid_adapt_s: float = 2.0  # how fast the speaker's mean centroid adapts
    peak_weight_db: float = 3.0  # the loudest 10 ms of a window, less this, drives the mouth when louder than the window
    attack_ms: float = 15.0  # a syllable opens the mouth within its frame (1 - e^-40/15 = 93 %)
    release_ms: float = 60.0
    interrupt_release_ms: float = 25.0  # after a barge-in the mouth closes this fast (smooth, < 200 ms)
    shape_ms: float = 70.0  # smoothing of round/spread
    blink_interval_s: tuple[float, float] = (2.5, 5.5)
    blink_close_s: float = 0.08
    blink_hold_s: float = 0.04
    blink_open_s: float = 0.16
    double_blink_probability: float = 0.15
    gaze_fraction: float = 0.012  # largest eye movement, in face heights (a couple of pixels)
    gaze_interval_s: tuple[float, float] = (0.8, 3.0)  # time between saccades
    saccade_s: float = 0.03  # a saccade takes a frame or two
    head_shift_fraction: float = 0.018  # head translation amplitude, in face heights
    head_roll_deg: float = 1.6
    head_time_s: float = 1.4  # time constant of the head's random walk
    head_smooth_s: float = 0.35  # low-pass on top of it (no jitter)
    head_speech_gain: float = 1.6  # head moves more while speaking
    activity_s: float = 0.8  # time constant of the "is speaking" envelope that drives it
    breath_period_s: float = 4.2
    breath_px: float = 1.2  # chest rise at 512 px frame height
    brow_speech_gain: float = 0.6
    nod_fraction: float = 0.025  # head dip on a stressed syllable, in face heights


@dataclass
class RenderConfig:
    fixed_point_iterations: int = 2  # inverse of the forward displacement field
    mouth_feather_px: float = 1.0
    # The painted mouth interior (colours are scaled by the photo's light; teeth mix in its skin tone).
    cavity_rgb: tuple[float, float, float] = (74.0, 30.0, 26.0)
    tongue_rgb: tuple[float, float, float] = (150.0, 62.0, 66.0)
    teeth_rgb: tuple[float, float, float] = (242.0, 236.0, 222.0)
    teeth_height: float = 0.11  # upper teeth shown under the lip, in mouth widths (photos with closed lips)
    lower_teeth_height: float = 0.05
    tooth_width: float = 0.125


@dataclass
class LiteConfig:
    # (width, height), or "W*H"; rounded down to size_multiple
    size: tuple[int, int] = field(default=(512, 512), metadata={"parse": lambda value: parse_size(value)})
    fps: int = 25
    sample_rate: int = 16000
    block_frames: int = 1  # one frame a block: no frame waits for the audio of the next
    capacity: int | None = None  # None: measured from the render cost on this machine
    cpu_budget: float = 0.5  # share of the cores generation may plan for (video encoding and networking need the rest)
    cv2_threads: int | None = 1  # OpenCV threads per process (sessions scale by processes/cores)
    avatar_cache_size: int = 8
    seed: int = 0
    avatar_crossfade_frames: int = 4  # a mid-session portrait change blends over this many frames
    framing: FramingConfig = field(default_factory=FramingConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    rig: RigConfig = field(default_factory=RigConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def __post_init__(self) -> None:
        if self.block_frames < 1:
            raise ValueError(f"block_frames must be >= 1, got {self.block_frames}")
        if self.avatar_crossfade_frames < 0:
            raise ValueError(f"avatar_crossfade_frames must be >= 0, got {self.avatar_crossfade_frames}")
        if self.fps <= 0 or self.sample_rate % self.fps:
            raise ValueError("sample_rate must be a multiple of fps")


def parse_size(value: Any) -> tuple[int, int]:
    """'512*512' | '512x512' | (512, 512) -> (width, height), each side 64..4096."""
    if isinstance(value, str):
        from live_avatar.core.offline.plan import parse_size as parse_size_text  # the one "W*H" parser

        value = parse_size_text(value)
    try:
        width, height = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"size must be two integers (width, height), got {value!r}") from None
    if not (64 <= width <= 4096 and 64 <= height <= 4096):
        raise ValueError(f"size {width}x{height} is out of range (64..4096 a side)")
    return width, height


def load_lite_config(overrides: dict[str, Any] | None = None, path: Path | str | None = DEFAULT_CONFIG_PATH) -> LiteConfig:
    """Defaults <- YAML file (if present) <- keyword overrides. Unknown keys are an error."""
    values: dict[str, Any] = {}
    if path is not None and Path(path).is_file():
        values = read_yaml_mapping(path)
        from_mapping(LiteConfig, values, str(path))  # the file's own mistakes are reported against it
    config = from_mapping(LiteConfig, merge_mappings(values, dict(overrides or {})), "lite engine options")
    width, height = config.size
    step = config.framing.size_multiple
    config.size = (max(step, width // step * step), max(step, height // step * step))
    return config
