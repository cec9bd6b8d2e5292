"""The causal Wan2.2-S2V DiT (Live Avatar): modules with the official parameter names, and the two
forward modes of spec section 2 -- the sink prefill and the inference (one block, one step) call.

The model itself is stateless: every cache (KV ring, sink, text K/V) belongs to the caller, which hands
a :class:`SelfAttentionCache` to :meth:`CausalS2VDiT.run_blocks`. :mod:`.stepper` is that caller.

Precision (spec 2.0). Parameters are bf16 on GPU and float32 on CPU; the time MLPs, the audio conv
stack and the head run in float32 (see :data:`FP32_MODULES`); modulation arithmetic and the gated
residual adds are float32 inside a block; the residual is rounded to the parameter dtype at block exit.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .audio_encoder import CausalAudioEncoder
from .config import DiTConfig
from .framepack import FramePackMotioner
from .injector import AttentionProjections, AudioInjector, attend
from .rope import use_fused_rope

# Module-name prefixes kept in float32 even when the rest is bf16 (the reference's fp32 autocast regions;
# upcasting bf16 weights once at load is numerically identical to upcasting them on every call).
FP32_MODULES = ("time_embedding.", "time_projection.", "casual_audio_encoder.", "head.")

# Token-type rows of trainable_cond_mask.
TOKEN_NOISY, TOKEN_REF, TOKEN_MOTION = 0, 1, 2


class SelfAttentionCache(Protocol):
    """Self-attention of one DiT call with its caches; implemented by the stepper.

    ``attend(layer, q, k, v)`` receives the layer's un-rotated, RMS-normed ``q, k`` and ``v`` of the
    call's tokens (``[N, heads, head_dim]``) and returns the attention output ``[N, heads*head_dim]``
    (before the output projection). It applies RoPE and reads/writes its caches as it sees fit.
    """

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[cos | sin](t * 10000^(-k/half))`` computed in float64 from t, returned as float32 ``[N, dim]``."""
    half = dim // 2
    pos = t.to(torch.float64).reshape(-1)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class DiTBlock(nn.Module):
    """``blocks.i``: modulated self-attention, text cross-attention, modulated FFN (spec 2.6)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.eps = cfg.eps
        self.modulation = nn.Parameter(torch.empty(1, 6, d))
        self.self_attn = AttentionProjections(d, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True)
        self.cross_attn = AttentionProjections(d, cfg.num_heads, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self._compiled: tuple | None = None  # torch.compile'd (attention_inputs, attention_residual_and_ffn)

    def _ln(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps)

    def _modulation(self, e0: torch.Tensor):
        mod = self.modulation.float() + e0
        return [m[:, None, :] for m in mod.unbind(dim=1)]  # shift1, scale1, gate1, shift2, scale2, gate2

    def attention_inputs(self, x: torch.Tensor, e0: torch.Tensor):
        """Modulated LN + q/k/v projections: x ``[G, n, d]`` -> un-rotated q, k, v ``[G*n, H, dh]``."""
        dtype = x.dtype
        g, n, d = x.shape
        sh1, sc1, _, _, _, _ = self._modulation(e0)
        u = (self._ln(x).to(dtype).float() * (1 + sc1) + sh1).to(dtype).reshape(g * n, d)
        k, v = self.self_attn.project_kv(u)
        return self.self_attn.project_q(u), k, v

    def attention_residual_and_ffn(self, x, attn, e0, text_k, text_v, norm3_input_bf16: bool):
        """Output projection + gated residual, text cross-attention, modulated FFN; returns x's dtype."""
        dtype = x.dtype
        g, n, d = x.shape
        _, _, g1, sh2, sc2, g2 = self._modulation(e0)
        y = self.self_attn.o(attn).reshape(g, n, d)
        xf = x.float() + y.float() * g1

        # Reference quirk: the cross-attention pre-norm sees x rounded to bf16 (even in float32 runs).
        norm_in = xf.to(torch.bfloat16) if norm3_input_bf16 else xf
        w, b = self.norm3.weight.float(), self.norm3.bias.float()
        h = F.layer_norm(norm_in.float(), (d,), w, b, self.eps).to(norm_in.dtype).to(dtype)
        qc = self.cross_attn.project_q(h.reshape(g * n, d))
        c = self.cross_attn.o(attend(qc, text_k, text_v)).reshape(g, n, d)
        xf = xf + c.float()

        z = self.ffn((self._ln(xf) * (1 + sc2) + sh2).to(dtype))
        return (xf + z.float() * g2).to(dtype)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        text_k: torch.Tensor,
        text_v: torch.Tensor,
        self_attention,
        norm3_input_bf16: bool,
    ) -> torch.Tensor:
        """x ``[G, n, d]`` (G modulation groups = latent frames); e0 float32 ``[G, 6, d]``.

        ``self_attention(q, k, v)`` maps ``[G*n, H, dh]`` tensors to ``[G*n, d]`` (RoPE and caches live
        there, outside the two compilable halves).
        """
        pre = self._compiled[0] if self._compiled else self.attention_inputs
        post = self._compiled[1] if self._compiled else self.attention_residual_and_ffn
        q, k, v = pre(x, e0)
        return post(x, self_attention(q, k, v), e0, text_k, text_v, norm3_input_bf16)


class Head(nn.Module):
    """``head``: modulated LN + Linear to ``prod(patch)*out_dim`` values per token (float32)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.empty(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x ``[G, n, d]``, e float32 ``[G, d]`` (time_embedding output, not the projection)."""
        shift, scale = (self.modulation.float() + e[:, None, :]).unbind(dim=1)
        normed = F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype).float()
        h = normed * (1 + scale[:, None]) + shift[:, None]
        return F.linear(h, self.head.weight.float(), self.head.bias.float()).to(x.dtype)


class CausalS2VDiT(nn.Module):
    """Causal Wan2.2-S2V DiT. ``state_dict()`` keys equal the official checkpoint keys."""

    def __init__(self, cfg: DiTConfig, framepack_buckets: tuple[int, int, int] = (1, 2, 16)) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.cond_encoder = nn.Conv3d(cfg.cond_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.trainable_cond_mask = nn.Embedding(3, d)
        self.casual_audio_encoder = CausalAudioEncoder(cfg)
        self.audio_injector = AudioInjector(cfg)
        self.frame_packer = FramePackMotioner(cfg, framepack_buckets)
        self.injector_of_layer = {layer: k for k, layer in enumerate(cfg.audio_inject_layers)}

    @property
    def param_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def compile_blocks(self, **compile_kwargs) -> None:
        """``torch.compile`` the two dense halves of every block and the audio injections (GPU; the first
        calls are slow).

        The self-attention stays eager between the halves (on CUDA its RoPE and ring stores are compiled
        kernels of their own: rope.use_fused_rope), so shapes are static per geometry: one graph for the
        sink call and one for the denoising calls, per block.
        """
        import torch._dynamo

        # One graph per (block, call kind) and half; the default recompile limit (8) is far too low.
        # The option names changed across torch versions: raise whichever exist.
        limit, dynamo_config = 8 * len(self.blocks) + 8, torch._dynamo.config
        for name, value in (("cache_size_limit", limit), ("recompile_limit", limit),
                            ("accumulated_cache_size_limit", 4 * limit), ("accumulated_recompile_limit", 4 * limit)):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), value))
        if compile_kwargs.get("backend", "inductor") == "inductor":
            import torch._inductor.config as inductor_config

            # Keep the explicit bf16 roundings of the reference inside fused kernels.
            if hasattr(inductor_config, "emulate_precision_casts"):
                inductor_config.emulate_precision_casts = True
        compile_kwargs.setdefault("dynamic", False)
        if compile_kwargs.get("backend", "inductor") == "inductor" and self.device.type == "cuda":
            use_fused_rope({k: v for k, v in compile_kwargs.items() if k != "mode"})  # RoPE between the halves
        for block in self.blocks:
            block._compiled = (
                torch.compile(block.attention_inputs, **compile_kwargs),
                torch.compile(block.attention_residual_and_ffn, **compile_kwargs),
            )
        self.audio_injector.compile_inject(**compile_kwargs)

    # ---- conditioning ---------------------------------------------------------------------------

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """T5 output ``[L, text_dim]`` (L <= text_len) -> ``[text_len, d]``; zero-padded before the MLP."""
        cfg = self.config
        if context.ndim == 3 and context.shape[0] == 1:
            context = context[0]
        if context.ndim != 2 or context.shape[1] != cfg.text_dim:
            raise ValueError(f"text context must be [L, {cfg.text_dim}], got {tuple(context.shape)}")
        if context.shape[0] > cfg.text_len:
            raise ValueError(f"text context has {context.shape[0]} tokens, more than text_len={cfg.text_len}")
        padded = context.new_zeros(cfg.text_len, cfg.text_dim)
        padded[: context.shape[0]] = context
        return self.text_embedding(padded.to(device=self.device, dtype=self.param_dtype))

    def text_kv(self, text_embedded: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention K/V of the embedded text (constant for a session)."""
        return [block.cross_attn.project_kv(text_embedded) for block in self.blocks]

    def time_embed(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t ``[G]`` -> (e float32 ``[G, d]``, e0 float32 ``[G, 6, d]``) (spec 2.4)."""
        emb = sinusoidal_embedding(t.to(self.device), self.config.freq_dim)
        e = self.time_embedding(emb.to(self.time_embedding[0].weight.dtype)).float()
        e0 = self.time_projection(e.to(self.time_projection[1].weight.dtype)).float()
        return e, e0.unflatten(1, (6, self.config.dim))

    def embed_noisy(self, x: torch.Tensor) -> torch.Tensor:
        """Noisy latents ``[C, F, h, w]`` -> tokens ``[F, Lf, d]`` (patchify + pose bias + type row 0)."""
        tok = self.patch_embedding(x.to(device=self.device, dtype=self.param_dtype)[None])
        # The pose condition is all zeros, so cond_encoder contributes exactly its bias.
        tok = tok + self.cond_encoder.bias[None, :, None, None, None]
        tok = tok[0].flatten(2).permute(1, 2, 0)  # [d, F, Lf] -> [F, Lf, d]
        return tok + self.trainable_cond_mask.weight[TOKEN_NOISY]

    def embed_sink(self, ref_latent: torch.Tensor, motion_latents: torch.Tensor) -> torch.Tensor:
        """Reference ``[C, 1, h, w]`` + motion ``[C, T, h, w]`` -> sink tokens ``[Nc, d]`` = [ref; 1x; 2x; 4x]."""
        dev, dt = self.device, self.param_dtype
        ref = self.patch_embedding(ref_latent.to(device=dev, dtype=dt)[None])[0].flatten(1).t()
        motion = self.frame_packer(motion_latents.to(device=dev, dtype=dt))
        ref = ref + self.trainable_cond_mask.weight[TOKEN_REF]
        motion = motion + self.trainable_cond_mask.weight[TOKEN_MOTION]
        return torch.cat([ref, motion], dim=0)

    # ---- transformer ----------------------------------------------------------------------------

    def run_blocks(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        text_kv: list[tuple[torch.Tensor, torch.Tensor]],
        cache: SelfAttentionCache,
        *,
        norm3_input_bf16: bool,
        audio: tuple[torch.Tensor, torch.Tensor] | None = None,
        num_layers: int | None = None,
        trace: dict | None = None,
    ) -> torch.Tensor:
        """Run the transformer blocks over x ``[G, n, d]``.

        audio: (tokens ``[G, n_tok, d]``, global ``[G, d]``) for the injection after the configured layers;
        None in the sink call. num_layers: stop early (the sink only needs the caches' K/V).
        trace: when a dict, receives ``block{i}_out`` and ``block{i}_out_after_audio``.
        """
        for i in range(num_layers if num_layers is not None else len(self.blocks)):
            text_k, text_v = text_kv[i]
            x = self.blocks[i](x, e0, text_k, text_v, lambda q, k, v, i=i: cache.attend(i, q, k, v), norm3_input_bf16)
            if trace is not None:
                trace[f"block{i}_out"] = x
            if audio is not None and i in self.injector_of_layer:
                tokens, glob = audio
                x = self.audio_injector.inject(self.injector_of_layer[i], x, tokens, glob)
            if trace is not None:
                trace[f"block{i}_out_after_audio"] = x  # equals block{i}_out where no injector follows
        return x

    def unpatchify(self, out: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """Head output ``[F, Lf, 4*C]`` -> ``[C, F, 2*grid_h, 2*grid_w]``; per token (p, q, r, c), c fastest."""
        f = out.shape[0]
        c = self.config.out_dim
        pt, ph, pw = self.config.patch_size
        o = out.reshape(f, grid_h, grid_w, pt, ph, pw, c)
        o = o.permute(6, 0, 3, 1, 4, 2, 5)  # c, f, pt, gh, ph, gw, pw
        return o.reshape(c, f * pt, grid_h * ph, grid_w * pw)

    def predict_velocity(self, x: torch.Tensor, e: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """Head + unpatchify of the last block's output ``[F, Lf, d]``."""
        return self.unpatchify(self.head(x, e), grid_h, grid_w)
