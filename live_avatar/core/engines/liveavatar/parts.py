"""The models a liveavatar engine holds (one copy per process): weight discovery in ``weights_dir`` (layout in
:mod:`.engine`), the VAE loader and the three part factories (checkpoint, tiny, 14B random)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from .audio_features import AudioFeatureConfig, Wav2VecFeatures
from .options import EngineConfigError, LiveAvatarOptions, resolve_device
from .text_encoder import PromptEncoder, TextEncoderConfig
from .vae_stream import WanVaeCodec

WAN_DIR_NAME = "Wan2.2-S2V-14B"
LORA_FILE = "liveavatar.safetensors"
VAE_FILE = "Wan2.1_VAE.pth"
WAV2VEC_DIR = "wav2vec2-large-xlsr-53-english"


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
    if opts.kv_layout is not None:
        streaming = replace(streaming, kv_layout=opts.kv_layout)
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
        fp8=opts.fp8, fp8_scaling=opts.fp8_scaling,
    )
    codec = WanVaeCodec(load_wan_vae(wan, device, dtype))
    audio = Wav2VecFeatures.from_folder(wav2vec, device=device, dtype=dtype, config=_audio_config(opts))
    text = PromptEncoder.from_folder(wan, device=_text_device(opts, device), dtype=dtype,
                                     config=TextEncoderConfig(text_len=model_config.dit.text_len))
    return LiveAvatarParts(dit, model_config, codec, audio, text, description=f"checkpoint {wan} + LoRA {lora}")


def _text_device(opts: LiveAvatarOptions, device: torch.device) -> torch.device:
    if opts.text_encoder_device == "auto":
        return device
    try:
        return resolve_device(opts.text_encoder_device)
    except EngineConfigError as exc:
        raise EngineConfigError(f"text_encoder_device: {exc}") from None


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
        text = PromptEncoder.from_folder(t5, device=_text_device(opts, device), dtype=dtype,
                                         config=TextEncoderConfig(text_len=model_config.dit.text_len))
    return LiveAvatarParts(dit, model_config, codec, audio, text, description="tiny random models")


def random_wav2vec2_large(device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """The wav2vec2-large-xlsr-53 architecture with seeded random weights."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    config = Wav2Vec2Config(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_dim=(512,) * 7, conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, vocab_size=33,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Wav2Vec2ForCTC(config)
    return model.to(device, dtype)


def random_full_parts(opts: LiveAvatarOptions, device: torch.device, dtype: torch.dtype) -> LiveAvatarParts:
    """The real 14B DiT, Wan2.1 VAE and wav2vec2-large architectures with random weights (benchmarks)."""
    from diffusers import AutoencoderKLWan

    from .loader import build_meta_model, materialize_empty_, random_init_

    model_config = _model_config(opts)
    dit = build_meta_model(model_config.dit, model_config.streaming)
    materialize_empty_(dit, device, dtype)
    random_init_(dit, seed=opts.seed)
    with torch.device(device):
        vae = AutoencoderKLWan()
    codec = WanVaeCodec(vae.to(device, dtype))
    audio = Wav2VecFeatures(random_wav2vec2_large(device, dtype, opts.seed), config=_audio_config(opts))
    text = _RandomPromptContext(model_config.dit.text_dim, device, dtype)
    return LiveAvatarParts(dit, model_config, codec, audio, text, description="14B architecture, random weights")
