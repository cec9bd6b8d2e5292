"""The models one pipeline rank loads: the DiT (every rank runs full DiT calls for its steps and the sink),
the VAE only on the rank that decodes. No wav2vec, no text encoder: rank 0 runs those and sends tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..options import LiveAvatarOptions, vae_channels_last_wanted, vae_compile_wanted


@dataclass
class RankParts:
    dit: Any  # CausalS2VDiT
    model_config: Any  # ModelConfig (sink_refresh switched off in the stepper, as the engine's)
    codec: Any | None  # WanVaeCodec on the decoding rank only


def load_rank_parts(opts: LiveAvatarOptions, device: torch.device, dtype: torch.dtype, *, with_dit: bool,
                    with_vae: bool) -> RankParts:
    from .. import parts
    from ..loader import build_meta_model, materialize_empty_, random_init_
    from ..vae_stream import WanVaeCodec

    dit = codec = None
    if opts.tiny:
        from ..tiny_weights import TinySpec, tiny_dit_config, tiny_vae

        spec = TinySpec(seed=opts.seed)
        model_config = parts._model_config(opts, tiny_dit_config(spec))
        if with_dit:  # the same seeded values as parts.tiny_parts
            dit = random_init_(build_meta_model(model_config.dit, model_config.streaming), seed=spec.seed).to(device)
            if dtype != torch.float32:
                from ..dit import FP32_MODULES

                for name, param in dit.named_parameters():
                    if not name.startswith(FP32_MODULES):
                        param.data = param.data.to(dtype)
        if with_vae:
            codec = WanVaeCodec(tiny_vae(seed=spec.seed, base_dim=spec.vae_base_dim).to(device, dtype))
    elif opts.random_weights:
        model_config = parts._model_config(opts)
        if with_dit:
            dit = build_meta_model(model_config.dit, model_config.streaming)
            materialize_empty_(dit, device, dtype)
            random_init_(dit, seed=opts.seed)
        if with_vae:
            from diffusers import AutoencoderKLWan

            with torch.device(device):
                codec = WanVaeCodec(AutoencoderKLWan().to(device, dtype))
    else:
        from ..config import DiTConfig
        from ..loader import load_dit

        root = Path(opts.weights_dir).expanduser()
        wan = parts._find_wan_dir(root)
        model_config = parts._model_config(opts, DiTConfig.from_checkpoint_dir(wan))
        if with_dit:
            dit = load_dit(wan, config=model_config.dit, streaming=model_config.streaming,
                           lora_path=parts._find_lora(root, wan, opts.lora_path), device=device, dtype=dtype, fp8=opts.fp8,
                           fp8_scaling=opts.fp8_scaling)
        if with_vae:
            codec = WanVaeCodec(parts.load_wan_vae(wan, device, dtype))
    if dit is not None:
        if opts.fp8 and not opts.weights_dir:
            from ..fp8 import quantize_fp8_

            quantize_fp8_(dit, opts.fp8_scaling)
        if opts.compile:
            dit.compile_blocks()
    if codec is not None:
        codec.configure(channels_last=vae_channels_last_wanted(opts.vae_channels_last, device.type),
                        compile_decoder=vae_compile_wanted(opts.compile_vae, opts.compile, device.type),
                        backend=opts.compile_backend)
    return RankParts(dit, model_config, codec)
