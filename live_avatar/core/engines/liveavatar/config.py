"""Configuration of the causal Wan2.2-S2V (Live Avatar) DiT and of its streaming loop.

Two dataclasses, both frozen:

* :class:`DiTConfig` -- the network's architecture, the fields of the checkpoint's ``config.json``
  (spec section 1.1). Absent fields take the 14B defaults.
* :class:`StreamingConfig` -- the pipeline constants that the reference hard-codes (spec section 1.2):
  block and clip sizes, motion frames, FramePack buckets, sink/ring capacity, rolling reference RoPE,
  sampler, LoRA rank/alpha and the precision quirks that matter for bit-closeness.

:func:`load_model_config` reads both from ``configs/engines/liveavatar-*.yaml`` (sections ``dit:`` and
``streaming:``; other top-level sections belong to the engine and are ignored here).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from live_avatar.core.config_loading import ConfigError, from_mapping, read_yaml_mapping

WAN_14B_INJECT_LAYERS = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of the causal S2V DiT (checkpoint ``config.json`` field names)."""

    model_type: str = "s2v"
    dim: int = 5120
    ffn_dim: int = 13824
    freq_dim: int = 256
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    cond_dim: int = 16
    audio_dim: int = 1024
    num_audio_token: int = 4
    # The 25 hidden states of wav2vec2-large (embedding output + 24 layers); fixed in the reference.
    num_audio_layers: int = 25
    audio_inject_layers: tuple[int, ...] = WAN_14B_INJECT_LAYERS
    enable_adain: bool = True
    adain_mode: str = "attn_norm"
    # The audio AdaLN uses diffusers' AdaLayerNorm default eps, not the model eps.
    adain_eps: float = 1e-5
    zero_timestep: bool = True
    enable_framepack: bool = True
    framepack_drop_mode: str = "padd"
    enable_motioner: bool = False
    add_last_motion: bool = True
    # Unused by inference but present in the file; accepted so that config.json round-trips.
    window_size: tuple[int, int] = (-1, -1)
    zero_init: bool = True
    enable_tsm: bool = False
    trainable_token_pos_emb: bool = False
    motion_token_num: int = 1024

    def __post_init__(self) -> None:
        if self.model_type != "s2v":
            raise ConfigError(f"model_type must be 's2v', got {self.model_type!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 12:
            raise ConfigError(f"head_dim {self.head_dim} must be even and >= 12 for the 3-axis RoPE")
        if self.dim % 4:
            raise ConfigError(f"dim {self.dim} must be divisible by 4 (audio encoder widths dim/4, dim/2)")
        if tuple(self.patch_size) != (1, 2, 2):
            raise ConfigError(f"only patch_size (1, 2, 2) is supported, got {self.patch_size}")
        if self.enable_motioner:
            raise ConfigError("enable_motioner=True is not supported (the causal model requires FramePack)")
        if not (self.enable_adain and self.adain_mode == "attn_norm"):
            raise ConfigError("only enable_adain=True with adain_mode='attn_norm' is supported")
        if not self.enable_framepack or self.framepack_drop_mode != "padd":
            raise ConfigError("only enable_framepack=True with framepack_drop_mode='padd' is supported")
        layers = tuple(self.audio_inject_layers)
        if list(layers) != sorted(set(layers)) or any(not 0 <= i < self.num_layers for i in layers):
            raise ConfigError(f"audio_inject_layers {layers} must be ascending, unique and < num_layers")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_injectors(self) -> int:
        return len(self.audio_inject_layers)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "dit config") -> "DiTConfig":
        """Build from a ``config.json``-style mapping. Keys starting with ``_`` and keys this model does not
        use are ignored: checkpoint files carry fields of other Wan variants."""
        known = {f.name for f in fields(cls)}
        return from_mapping(cls, {k: v for k, v in data.items() if k in known}, source)

    @classmethod
    def from_checkpoint_dir(cls, checkpoint_dir: str | Path) -> "DiTConfig":
        path = Path(checkpoint_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json in checkpoint folder {checkpoint_dir}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class StreamingConfig:
    """Streaming-loop constants (spec section 1.2 and the precision quirks of section 2)."""

    fps: int = 25
    video_frames_per_latent: int = 4  # VAE temporal compression
    latent_frames_per_block: int = 3  # 12 video frames = 0.48 s
    blocks_per_clip: int = 4  # clip = 48 video frames = 12 latent frames
    motion_frames: int = 73  # -> (73 + 3) // 4 = 19 motion latents
    framepack_buckets: tuple[int, int, int] = (1, 2, 16)  # nearest -> farthest
    # Temporal RoPE positions of the motion buckets (never roll): 1x, 2x, then 4x oldest first.
    motion_rope_frames_1x: int = -1
    motion_rope_frames_2x: int = -3
    motion_rope_frames_4x: tuple[int, ...] = (-19, -14, -9, -4)
    ref_rope_base_frame: int = 30
    ref_rope_offset_range: tuple[int, int] = (4, 30)  # Delta ~ U{lo..hi}, drawn per DiT call
    # "random": a random.Random (seeded by ref_rope_seed, or unseeded when None) draws Delta per call;
    # "fixed": Delta = ref_rope_fixed_offset for every call (deterministic tests).
    ref_rope_offset_mode: str = "random"
    ref_rope_seed: int | None = None
    ref_rope_fixed_offset: int = 30
    rope_theta: float = 10000.0
    # Reference quirk: the RoPE cos/sin table is stored as complex fp16.
    rope_fp16_table: bool = True
    # Reference quirk: the text cross-attention pre-norm input is rounded to bf16 even in fp32 runs.
    norm3_input_bf16: bool = True
    # Sink capacity in tokens; None -> exactly what the geometry needs (2.5 * tokens per latent frame).
    sink_capacity_tokens: int | None = None
    # KV memory layout per denoising step: "contiguous" keeps a rotated copy of the sink next to each
    # ring (no concatenation per layer; fastest), "compact" concatenates [sink ; ring] per layer and
    # saves 2 * num_steps * sink K/V (about 8 GiB at 704x384 for the 14B model; ~6% slower).
    kv_layout: str = "contiguous"
    # "clip1_first_latent": re-run the sink once, before clip 1, with latent 0 of clip 0's first block
    # and the original motion latents (TPP semantics); "none": keep the first sink forever.
    sink_refresh: str = "clip1_first_latent"
    num_steps: int = 4
    shift: float = 3.0
    num_train_timesteps: int = 1000
    lora_rank: int = 128
    lora_alpha: float = 64.0

    def __post_init__(self) -> None:
        if self.latent_frames_per_block < 1 or self.blocks_per_clip < 1:
            raise ConfigError("latent_frames_per_block and blocks_per_clip must be >= 1")
        if len(self.framepack_buckets) != 3:
            raise ConfigError(f"framepack_buckets must have 3 entries, got {self.framepack_buckets}")
        if self.framepack_buckets[0] != 1 or self.framepack_buckets[1] != 2:
            raise ConfigError(f"framepack_buckets must be (1, 2, 4*k), got {self.framepack_buckets}")
        if len(self.motion_rope_frames_4x) * 4 != self.framepack_buckets[2]:
            raise ConfigError("motion_rope_frames_4x needs one position per 4 latent frames of the 4x bucket")
        lo, hi = self.ref_rope_offset_range
        if lo > hi:
            raise ConfigError(f"ref_rope_offset_range {self.ref_rope_offset_range} is empty")
        if self.ref_rope_offset_mode not in ("random", "fixed"):
            raise ConfigError(f"ref_rope_offset_mode must be 'random' or 'fixed', got {self.ref_rope_offset_mode!r}")
        if self.kv_layout not in ("contiguous", "compact"):
            raise ConfigError(f"kv_layout must be 'contiguous' or 'compact', got {self.kv_layout!r}")
        if self.sink_refresh not in ("clip1_first_latent", "none"):
            raise ConfigError(f"sink_refresh must be 'clip1_first_latent' or 'none', got {self.sink_refresh!r}")
        if self.num_steps < 1:
            raise ConfigError("num_steps must be >= 1")

    @property
    def video_frames_per_block(self) -> int:
        return self.latent_frames_per_block * self.video_frames_per_latent

    @property
    def ring_latent_frames(self) -> int:
        """KV ring length per denoising step: exactly one clip of latent frames."""
        return self.latent_frames_per_block * self.blocks_per_clip

    @property
    def lat_motion_frames(self) -> int:
        return (self.motion_frames + 3) // 4

    @property
    def lora_scale(self) -> float:
        return float(self.lora_alpha) / float(self.lora_rank)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "streaming config") -> "StreamingConfig":
        return from_mapping(cls, data, source)


@dataclass(frozen=True)
class ModelConfig:
    """Everything the DiT side needs: architecture + streaming constants + optional weight paths."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    checkpoint_dir: str | None = None  # folder with config.json + diffusion_pytorch_model*.safetensors
    lora_path: str | None = None  # liveavatar.safetensors


@dataclass(frozen=True)
class WeightPaths:
    """The ``weights:`` section of an engine YAML file."""

    checkpoint_dir: str | None = None
    lora_path: str | None = None


def load_model_config(path: str | Path) -> ModelConfig:
    """Read the ``dit:``, ``streaming:`` and ``weights:`` sections of an engine YAML file.

    When ``dit:`` is absent and ``weights.checkpoint_dir`` holds a ``config.json``, the architecture
    comes from that file instead.
    """
    path = Path(path)
    data = read_yaml_mapping(path)
    unknown = sorted(set(data) - {"dit", "streaming", "weights"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: dit, streaming, weights", str(path))
    weights = from_mapping(WeightPaths, data.get("weights"), f"{path}: weights")
    checkpoint_dir = weights.checkpoint_dir
    if data.get("dit") is not None:
        dit = DiTConfig.from_dict(data["dit"], f"{path}: dit")
    elif checkpoint_dir:
        dit = DiTConfig.from_checkpoint_dir(checkpoint_dir)
    else:
        dit = DiTConfig()
    streaming = StreamingConfig.from_dict(data.get("streaming") or {}, f"{path}: streaming")
    return ModelConfig(dit=dit, streaming=streaming, checkpoint_dir=checkpoint_dir, lora_path=weights.lora_path)


@dataclass(frozen=True)
class LatentGeometry:
    """Token geometry of one session: latent size ``h x w`` (pixels / 8) and the derived counts."""

    latent_height: int
    latent_width: int
    patch_hw: int = 2

    def __post_init__(self) -> None:
        # FramePack's 4x bucket patchifies 8x8 latent pixels; the reference needs H, W multiples of 64.
        if self.latent_height <= 0 or self.latent_width <= 0 or self.latent_height % 8 or self.latent_width % 8:
            raise ConfigError(
                f"latent size {self.latent_height}x{self.latent_width} must be positive multiples of 8 "
                "(image height and width multiples of 64)"
            )

    @classmethod
    def from_pixels(cls, height: int, width: int, vae_stride: int = 8) -> "LatentGeometry":
        if height % vae_stride or width % vae_stride:
            raise ConfigError(f"image size {height}x{width} is not a multiple of the VAE stride {vae_stride}")
        return cls(height // vae_stride, width // vae_stride)

    @property
    def grid_height(self) -> int:
        return self.latent_height // self.patch_hw

    @property
    def grid_width(self) -> int:
        return self.latent_width // self.patch_hw

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_height * self.grid_width

    def motion_token_counts(self, streaming: StreamingConfig) -> tuple[int, int, int]:
        """Tokens of the FramePack buckets (1x, 2x, 4x)."""
        b1, b2, b4 = streaming.framepack_buckets
        n1 = b1 * self.tokens_per_frame
        n2 = (b2 // 2) * (self.latent_height // 4) * (self.latent_width // 4)
        n4 = (b4 // 4) * (self.latent_height // 8) * (self.latent_width // 8)
        return n1, n2, n4

    def sink_tokens(self, streaming: StreamingConfig) -> int:
        """Reference latent tokens + motion tokens (2.5 * tokens_per_frame for the default buckets)."""
        return self.tokens_per_frame + sum(self.motion_token_counts(streaming))
