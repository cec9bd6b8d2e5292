"""``LiveAvatarEngine``: the causal Wan2.2-S2V (Live Avatar) engine behind the engine contract.

Per block of 12 frames (0.48 s): wav2vec2 features of the block's rolling audio window
(``audio_features``) -> ``CausalStepper.step_block`` (4 Euler steps over the KV rings + sink)
-> streaming Wan VAE decode (``vae_stream``) -> uint8 frames ``[12, H, W, 3]``.

Options (``LiveAvatarEngine(**options)``, also ``avatar serve --engine liveavatar``):

=================  ===================================================================================
``weights_dir``    checkpoint folder (layout below); alias ``weights``
``tiny``           seeded random tiny models for every part (CPU, tests, no downloads)
``random_weights`` the real 14B architecture with random weights (benchmarks); no text encoder (a seeded
                   random prompt context stands in for umT5)
``device``         "auto" (cuda if available), "cuda", "cuda:1", "cpu"
``dtype``          "auto" (bf16 on GPU, float32 on CPU), "bfloat16", "float32"
``compile``        torch.compile the DiT blocks (GPU; the first session compiles for ~45 s)
``compile_vae``    also torch.compile the streaming VAE decoder (-70 ms a block on an H200; a later session may
                   recompile parts of it, seen stalling a session start for ~25 s, hence off by default)
``fp8``            FP8 (e4m3) Linears in the DiT (spec §9; Hopper/Ada GPUs), quantised after the LoRA merge
``size``           area cap "W*H" (reference ``--size`` rule, spec §7), applied to a frame of ``aspect``
``aspect``         "9:16" (portrait, default), "16:9", "1:1", ... : the output frame's aspect ratio
``prompt``         default prompt; ``seed`` noise seed (clip r uses seed + r)
``context_s`` / ``lookahead_s``   the live audio window (left context / lookahead, seconds)
``sink_refresh``   "reencode" (default, online-decode semantics: before clip 1 the sink is rebuilt from
                   the first generated latent and the VAE encoding of the last 73 frames), "keep_motion"
                   (TPP semantics: same motion latents), "none" (sink of clip 0 kept forever)
``capacity``       real-time sessions at once (default 1: one session holds one GPU)
``config``         optional engine YAML (``dit:``/``streaming:``/``weights:`` sections, see ``config.py``)
=================  ===================================================================================

Expected ``weights_dir`` layout (official downloads, nothing renamed)::

    WEIGHTS_DIR/
      Wan2.2-S2V-14B/                       # huggingface Wan-AI/Wan2.2-S2V-14B (or WEIGHTS_DIR itself)
        config.json                         # DiT architecture (model_type "s2v")
        diffusion_pytorch_model-0000{1..4}-of-00004.safetensors
        diffusion_pytorch_model.safetensors.index.json
        Wan2.1_VAE.pth                      # Wan2.1 VAE (converted to diffusers keys on load)
        models_t5_umt5-xxl-enc-bf16.pth     # umT5-XXL encoder (Wan key names)
        google/umt5-xxl/                    # its tokenizer
        wav2vec2-large-xlsr-53-english/     # transformers Wav2Vec2ForCTC folder
      LiveAvatar/liveavatar.safetensors     # huggingface Quark-Vision/Live-Avatar: the LoRA (rank 128)

Also accepted: ``liveavatar.safetensors`` directly in WEIGHTS_DIR or in the Wan folder, a diffusers
``vae/`` folder instead of ``Wan2.1_VAE.pth``, and ``text_encoder/`` + ``tokenizer/`` folders instead
of the Wan T5 files.

Frame alignment: frame k of a session shows the frame generated from audio frame k. The reference
drops the first 3 decoded frames of a session (its video then runs 3 frames ahead of the audio);
here they are replaced by copies of the first kept frame (``vae_stream``), so every block has 12
frames and the A/V offset is zero.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from live_avatar.core.contract import AudioBlock, AvatarError, EngineBusyError

from .audio_features import AudioFeatureConfig, Wav2VecFeatures
from .text_encoder import PromptEncoder, TextEncoderConfig
from .vae_stream import WanVaeCodec, to_uint8_frames

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "A person is talking to the camera with natural facial expressions and head movements."
WAN_DIR_NAME = "Wan2.2-S2V-14B"
LORA_FILE = "liveavatar.safetensors"
VAE_FILE = "Wan2.1_VAE.pth"
WAV2VEC_DIR = "wav2vec2-large-xlsr-53-english"


class EngineConfigError(ValueError):
    """An engine option is unknown or invalid, or the weights folder is incomplete (user-facing)."""


@dataclass(frozen=True)
class LiveAvatarOptions:
    weights_dir: str | None = None
    tiny: bool = False
    random_weights: bool = False
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    compile_vae: bool = False
    fp8: bool = False
    size: str | None = None  # None: "704*384" (real), "128*64" (tiny)
    aspect: str = "9:16"
    prompt: str = DEFAULT_PROMPT
    seed: int = 420
    context_s: float = 2.0
    lookahead_s: float = 0.16
    sink_refresh: str = "reencode"
    capacity: int = 1
    config: str | None = None
    lora_path: str | None = None  # default: found in weights_dir; "none" skips the LoRA

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> "LiveAvatarOptions":
        options = dict(options)
        if "weights" in options:
            options.setdefault("weights_dir", options.pop("weights"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in options if k not in known)
        if unknown:
            raise EngineConfigError(f"unknown liveavatar option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        opts = cls(**{k: v for k, v in options.items() if v is not None or k in ("weights_dir", "size", "config")})
        modes = sum([bool(opts.weights_dir), bool(opts.tiny), bool(opts.random_weights)])
        if modes != 1:
            raise EngineConfigError(
                "the liveavatar engine needs exactly one of: --weights DIR (option weights_dir: the checkpoint "
                "folder), --tiny (random tiny models, CPU) or random_weights=True (14B with random weights, benchmarks)"
            )
        if opts.sink_refresh not in ("reencode", "keep_motion", "none"):
            raise EngineConfigError(f"sink_refresh must be 'reencode', 'keep_motion' or 'none', got {opts.sink_refresh!r}")
        if opts.capacity < 1:
            raise EngineConfigError("capacity must be >= 1")
        return opts


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise EngineConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError(f"device {name!r} requested but CUDA is not available (use device='cpu' with tiny=True)")
    return device


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}.get(name)
    if dtype is None:
        raise EngineConfigError(f"dtype must be 'auto', 'bfloat16' or 'float32', got {name!r}")
    return dtype


def _parse_aspect(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.replace("/", ":").split(":"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise EngineConfigError(f"aspect must look like '9:16' (width:height), got {text!r}") from None
    return w, h


def frame_size(size: str, aspect: str) -> tuple[int, int]:
    """(width, height): the reference --size rule (area cap, sides multiples of 64) for a frame of ``aspect``."""
    from live_avatar.core.offline.plan import PlanError, choose_size, parse_size

    aw, ah = _parse_aspect(aspect)
    try:
        w, h = parse_size(size)
        # a large frame of the requested aspect, so that the rule scales it down to the area cap
        k = math.ceil(4 * math.sqrt(w * h / (aw * ah)))
        return choose_size(aw * k, ah * k, w * h, divisor=64)
    except PlanError as exc:
        raise EngineConfigError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------------
# Parts: the models an engine holds (one copy per process)


class _RandomPromptContext:
    """Stands in for umT5 with the 14B random weights (benchmarks): a seeded random context per prompt."""

    def __init__(self, dim: int, device: torch.device, dtype: torch.dtype, tokens: int = 24) -> None:
        self.dim, self.device, self.dtype, self.tokens = dim, device, dtype, tokens
        self.encode_calls = 0

    def encode(self, prompt: str | None) -> torch.Tensor:
        import hashlib

        seed = int(hashlib.sha256((prompt or "").encode()).hexdigest()[:8], 16)  # stable across processes
        gen = torch.Generator().manual_seed(seed)
        self.encode_calls += 1
        return torch.randn(self.tokens, self.dim, generator=gen).to(self.device, self.dtype)


@dataclass
class LiveAvatarParts:
    dit: Any  # CausalS2VDiT
    model_config: Any  # ModelConfig
    codec: WanVaeCodec
    audio: Wav2VecFeatures
    text: Any  # PromptEncoder | _RandomPromptContext
    description: str = ""


def _find_wan_dir(root: Path) -> Path:
    for candidate in (root, root / WAN_DIR_NAME):
        if (candidate / "config.json").is_file():
            return candidate
    raise EngineConfigError(f"no Wan2.2-S2V-14B checkpoint in {root}: expected config.json in {root} or {root / WAN_DIR_NAME}")


def _find_lora(root: Path, wan: Path, option: str | None) -> Path | None:
    if option == "none":
        return None
    if option:
        path = Path(option)
        if not path.is_file():
            raise EngineConfigError(f"LoRA file not found: {path}")
        return path
    candidates = [root / LORA_FILE, root / "LiveAvatar" / LORA_FILE, root / "Live-Avatar" / LORA_FILE, wan / LORA_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise EngineConfigError(
        f"no Live Avatar LoRA ({LORA_FILE}) found; looked in: {', '.join(str(p.parent) for p in candidates)} "
        "(pass lora_path=FILE, or lora_path='none' to run the base model)"
    )


def load_wan_vae(wan: Path, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    if (wan / "vae" / "config.json").is_file():
        return AutoencoderKLWan.from_pretrained(str(wan / "vae"), local_files_only=True).to(device, dtype)
    path = wan / VAE_FILE
    if not path.is_file():
        raise EngineConfigError(f"no Wan2.1 VAE in {wan}: expected {VAE_FILE} or a vae/ folder")
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = torch.load(path, map_location="cpu", weights_only=True)
    vae = AutoencoderKLWan()  # the default config is the Wan2.1 VAE
    vae.load_state_dict(convert_wan_vae_to_diffusers(state), strict=True)
    return vae.to(device, dtype)


def _model_config(opts: LiveAvatarOptions, dit_config=None):
    from .config import ModelConfig, StreamingConfig, load_model_config

    model_config = load_model_config(opts.config) if opts.config else ModelConfig()
    if dit_config is not None:
        model_config = replace(model_config, dit=dit_config)
    streaming = model_config.streaming
    # The engine performs the sink refresh itself (it may re-encode the motion latents); the stepper's
    # own refresh, when it has one, is switched off.
    if any(f.name == "sink_refresh" for f in fields(StreamingConfig)):
        streaming = replace(streaming, sink_refresh="none")
    return replace(model_config, streaming=streaming)


def load_parts(opts: LiveAvatarOptions, device: torch.device, dtype: torch.dtype) -> LiveAvatarParts:
    """The real checkpoint from ``opts.weights_dir``."""
    from .config import DiTConfig
    from .loader import load_dit

    root = Path(opts.weights_dir).expanduser()
    if not root.is_dir():
        raise EngineConfigError(f"weights folder not found: {root}")
    wan = _find_wan_dir(root)
    lora = _find_lora(root, wan, opts.lora_path)
    model_config = _model_config(opts, DiTConfig.from_checkpoint_dir(wan))
    wav2vec = wan / WAV2VEC_DIR
    if not (wav2vec / "config.json").is_file():
        raise EngineConfigError(f"no wav2vec2 folder in {wan}: expected {WAV2VEC_DIR}/config.json")
    dit = load_dit(
        wan, config=model_config.dit, streaming=model_config.streaming, lora_path=lora, device=device, dtype=dtype,
        fp8=opts.fp8,
    )
    codec = WanVaeCodec(load_wan_vae(wan, device, dtype))
    audio = Wav2VecFeatures.from_folder(wav2vec, device=device, dtype=dtype, config=_audio_config(opts))
    text = PromptEncoder.from_folder(wan, device=device, dtype=dtype, config=TextEncoderConfig(text_len=model_config.dit.text_len))
    return LiveAvatarParts(dit, model_config, codec, audio, text, description=f"checkpoint {wan} + LoRA {lora}")


def _audio_config(opts: LiveAvatarOptions) -> AudioFeatureConfig:
    return AudioFeatureConfig(context_s=opts.context_s, lookahead_s=opts.lookahead_s)


def tiny_parts(opts: LiveAvatarOptions, device: torch.device, dtype: torch.dtype) -> LiveAvatarParts:
    """Seeded random tiny models for every part; wav2vec/umT5 go through their real folder loaders."""
    from .loader import build_meta_model, random_init_
    from .tiny_weights import TinySpec, tiny_dit_config, tiny_vae, write_tiny_umt5, write_tiny_wav2vec

    spec = TinySpec(seed=opts.seed)
    model_config = _model_config(opts, tiny_dit_config(spec))
    dit = random_init_(build_meta_model(model_config.dit, model_config.streaming), seed=spec.seed)  # on the CPU
    dit = dit.to(device=device)
    if dtype != torch.float32:
        from .dit import FP32_MODULES

        for name, param in dit.named_parameters():
            if not name.startswith(FP32_MODULES):
                param.data = param.data.to(dtype)
    codec = WanVaeCodec(tiny_vae(seed=spec.seed, base_dim=spec.vae_base_dim).to(device, dtype))
    with tempfile.TemporaryDirectory(prefix="liveavatar-tiny-") as tmp:
        w2v = write_tiny_wav2vec(Path(tmp) / "wav2vec", hidden_size=spec.audio_dim, num_layers=spec.audio_layers, seed=spec.seed)
        audio = Wav2VecFeatures.from_folder(w2v, device=device, dtype=dtype, config=_audio_config(opts))
        t5 = write_tiny_umt5(Path(tmp) / "umt5", d_model=spec.text_dim, vocab_size=spec.text_vocab, seed=spec.seed)
        text = PromptEncoder.from_folder(t5, device=device, dtype=dtype, config=TextEncoderConfig(text_len=model_config.dit.text_len))
    return LiveAvatarParts(dit, model_config, codec, audio, text, description="tiny random models")


def random_full_parts(opts: LiveAvatarOptions, device: torch.device, dtype: torch.dtype) -> LiveAvatarParts:
    """The real 14B DiT, Wan2.1 VAE and wav2vec2-large architectures with random weights (benchmarks)."""
    from diffusers import AutoencoderKLWan
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from .loader import build_meta_model, materialize_empty_, random_init_

    model_config = _model_config(opts)
    dit = build_meta_model(model_config.dit, model_config.streaming)
    materialize_empty_(dit, device, dtype)
    random_init_(dit, seed=opts.seed)
    with torch.device(device):
        vae = AutoencoderKLWan()
        w2v_cfg = Wav2Vec2Config(  # wav2vec2-large-xlsr-53 architecture
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            conv_dim=(512,) * 7, conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
            num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, vocab_size=33,
        )
        w2v = Wav2Vec2ForCTC(w2v_cfg)
    codec = WanVaeCodec(vae.to(device, dtype))
    audio = Wav2VecFeatures(w2v.to(device, dtype), config=_audio_config(opts))
    text = _RandomPromptContext(model_config.dit.text_dim, device, dtype)
    return LiveAvatarParts(dit, model_config, codec, audio, text, description="14B architecture, random weights")


# ---------------------------------------------------------------------------------------------------------------
# Avatar and generator


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


class LiveAvatarGenerator:
    """BlockGenerator of one session: audio window -> DiT block -> streaming VAE -> uint8 frames."""

    def __init__(self, engine: "LiveAvatarEngine", avatar: LiveAvatar, prompt: str | None, *, sync_timing: bool = False):
        from .config import LatentGeometry
        from .sampler import ClipNoise
        from .stepper import CausalStepper

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
        # the rolling-reference RoPE offset is random per DiT call (as the reference); seeding it from the
        # session seed makes a session reproducible (the reference leaves it unseeded)
        self.stepper = CausalStepper(
            parts.dit, streaming, LatentGeometry.from_pixels(h, w), rope_rng=random.Random(engine.options.seed)
        )
        self.noise = ClipNoise(
            engine.options.seed, self.stepper.clip_noise_shape, streaming.latent_frames_per_block,
            device=engine.device, dtype=engine.dtype,
        )
        self.video = parts.codec.stream()
        self._prompt = prompt if prompt else engine.options.prompt
        self._started = False
        self._first_latent: torch.Tensor | None = None
        # last frames in [-1, 1] for the "reencode" sink refresh (motion = VAE(last 73 frames))
        self._recent = deque(maxlen=parts.codec.config.motion_frames)
        self.blocks_done = 0

    def _sync(self) -> float:
        if self.sync_timing and self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)
        return time.perf_counter()

    def start(self) -> None:
        """Sink prefill + VAE priming (done lazily before the first block; the benchmark times it alone)."""
        t0 = self._sync()
        with self.engine.compute_lock, torch.inference_mode():
            context = self.engine.parts.text.encode(self._prompt)
            self.stepper.prefill(self.avatar.reference_latent, self.avatar.motion_latents, context)
            self.video.start(self.avatar.motion_latents)
        self._recent.clear()
        self._recent.extend(self.avatar.pixels[:, None].unbind(1) * self._recent.maxlen)
        self._started = True
        self.timings.prefill_s = self._sync() - t0

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
        if self._closed:
            raise RuntimeError("generator is closed")
        if block.num_frames != self.block_frames:
            raise ValueError(f"liveavatar blocks have {self.block_frames} frames, got {block.num_frames}")
        if not self._started:
            self.start()
        t = BlockStageTimes(prefill_s=self.timings.prefill_s if self.blocks_done == 0 else 0.0)
        t_start = self._sync()
        with self.engine.compute_lock, torch.inference_mode():
            feats = self.engine.parts.audio.block_features(block)  # [25, D, 12] float32
            t1 = self._sync()
            t.audio_s = t1 - t_start
            streaming = self.engine.parts.model_config.streaming
            if self.stepper.block_index == streaming.blocks_per_clip:
                self._refresh_sink()
            t2 = self._sync()
            t.refresh_s = t2 - t1
            latents = self.stepper.step_block(feats[None].to(self.engine.dtype), self.noise.block(self.stepper.block_index))
            if self.stepper.block_index == 1:
                self._first_latent = latents[:, :1].clone()
            t3 = self._sync()
            t.dit_s = t3 - t2
            pixels = self.video.decode_block(latents)  # [3, 12, H, W]
            self._recent.extend(pixels.unbind(1))
            frames = to_uint8_frames(pixels).numpy()
            t.vae_s = self._sync() - t3
        t.total_s = t.audio_s + t.refresh_s + t.dit_s + t.vae_s
        self.timings = t
        self.blocks_done += 1
        return frames

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
        self.stepper = None  # frees the rings and the sink
        self.video = None
        self._recent.clear()
        self.engine._release_session()


class LiveAvatarEngine:
    """Engine contract implementation (see the module docstring for options and the weights layout)."""

    name = "liveavatar"
    sample_rate = 16000

    def __init__(self, **options: Any) -> None:
        self.options = LiveAvatarOptions.from_kwargs(options)
        opts = self.options
        self.device = _resolve_device(opts.device)
        self.dtype = _resolve_dtype(opts.dtype, self.device)
        size = opts.size or ("128*64" if opts.tiny else "704*384")
        self.size = frame_size(size, opts.aspect)  # (width, height)
        t0 = time.perf_counter()
        if opts.tiny:
            self.parts = tiny_parts(opts, self.device, self.dtype)
        elif opts.random_weights:
            self.parts = random_full_parts(opts, self.device, self.dtype)
        else:
            self.parts = load_parts(opts, self.device, self.dtype)
        streaming = self.parts.model_config.streaming
        self.fps = streaming.fps
        self.block_frames = streaming.video_frames_per_block
        self.capacity = opts.capacity
        if opts.fp8 and not opts.weights_dir:  # load_dit quantises checkpoints itself
            from .loader import quantize_fp8_

            quantize_fp8_(self.parts.dit)
            self.parts.description += ", FP8 Linears"
        self.compute_lock = threading.RLock()  # one model, several threads (sessions, avatar preparation)
        self._sessions = 0
        self._sessions_lock = threading.Lock()
        if opts.compile:
            self.parts.dit.compile_blocks()  # the dense block halves; attention and caches stay eager
        if opts.compile_vae:
            self.parts.codec.compile_decoder()
        logger.info("liveavatar engine ready: %s, %s %s, %dx%d, %.1f s", self.parts.description, self.device,
                    self.dtype, *self.size, time.perf_counter() - t0)

    def set_size(self, size: str, aspect: str | None = None) -> tuple[int, int]:
        """Change the output size (reference --size rule) for avatars prepared and sessions opened from now on."""
        self.size = frame_size(size, aspect or self.options.aspect)
        return self.size

    # ---- avatars -----------------------------------------------------------------------------------------
    def crop_to_size(self, image: np.ndarray) -> np.ndarray:
        """Resize to cover the engine size (aspect kept, bilinear) and center-crop: no black bars."""
        from PIL import Image

        w, h = self.size
        ih, iw = image.shape[:2]
        scale = max(w / iw, h / ih)
        rw, rh = max(w, round(iw * scale)), max(h, round(ih * scale))
        resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
        top, left = (rh - h) // 2, (rw - w) // 2
        return np.array(resized[top : top + h, left : left + w])  # a writable copy

    def prepare_avatar(self, image: np.ndarray) -> LiveAvatar:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise AvatarError("the portrait must be an RGB image (uint8 array [H, W, 3])")
        if min(image.shape[:2]) < 64:
            raise AvatarError(f"the portrait is too small ({image.shape[1]}x{image.shape[0]}); use at least 64x64 pixels")
        crop = self.crop_to_size(image)
        pixels = torch.from_numpy(crop).to(self.device).permute(2, 0, 1).float().div(127.5).sub(1.0).to(self.dtype)
        with self.compute_lock:
            latents = self.parts.codec.encode_portrait(pixels)
        return LiveAvatar(image=crop, pixels=pixels, reference_latent=latents.reference, motion_latents=latents.motion)

    # ---- sessions ----------------------------------------------------------------------------------------
    def _acquire_session(self) -> None:
        with self._sessions_lock:
            if self._sessions >= self.capacity:
                raise EngineBusyError(f"the liveavatar engine is at capacity ({self.capacity} session(s))")
            self._sessions += 1

    def _release_session(self) -> None:
        with self._sessions_lock:
            self._sessions = max(0, self._sessions - 1)

    @property
    def active_sessions(self) -> int:
        return self._sessions

    def new_generator(self, avatar: LiveAvatar, prompt: str | None = None, **options: Any) -> LiveAvatarGenerator:
        if not isinstance(avatar, LiveAvatar):
            raise AvatarError("not a liveavatar avatar (prepare it with this engine's prepare_avatar)")
        if avatar.image.shape[:2] != (self.size[1], self.size[0]):
            raise AvatarError(f"the avatar was prepared for another frame size than the engine's {self.size[0]}x{self.size[1]}")
        unknown = sorted(set(options) - {"sync_timing"})
        if unknown:
            raise EngineConfigError(f"unknown generator option(s): {', '.join(unknown)}")
        self._acquire_session()
        try:
            return LiveAvatarGenerator(self, avatar, prompt, sync_timing=bool(options.get("sync_timing", False)))
        except BaseException:
            self._release_session()
            raise

    def open_session(self, avatar: LiveAvatar, prompt: str | None = None, **options: Any):
        from live_avatar.core.stream import StreamSession

        config = options.pop("config", None)
        generator = self.new_generator(avatar, prompt, **options)
        return StreamSession(generator, fps=self.fps, sample_rate=self.sample_rate, config=config)

    def close(self) -> None:
        self.parts = None
