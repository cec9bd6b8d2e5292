"""Block-causal streaming of the S2V DiT: KV rings, sink cache, rolling reference RoPE, 4-step Euler.

Usage (one session; every tensor may live on CPU or the model's device)::

    stepper = CausalStepper(model, streaming_cfg, LatentGeometry(h, w))
    stepper.prefill(ref_latent, motion_latents, text_context)   # once per session
    noise = ClipNoise(seed, stepper.clip_noise_shape, streaming_cfg.latent_frames_per_block, device)
    while streaming:
        latents = stepper.step_block(audio_block, noise.block(stepper.block_index))  # [C, 3, h, w]
        # -> VAE stream decode (another module)

Inputs
    ref_latent      ``[C, 1, h, w]`` (or ``[1, C, 1, h, w]``): VAE latent of the reference image.
    motion_latents  ``[C, T, h, w]`` (or with a leading 1): the last ``sum(framepack_buckets)`` (19) are
                    used, oldest first; fewer are zero-padded on the left.
    text_context    ``[L, text_dim]`` (or ``[1, L, text_dim]``), L <= text_len: the umT5 output.
    audio_block     ``[1, layers, audio_dim, video_frames_per_block]`` (or without the leading 1): the
                    25 wav2vec2 hidden states of the block's 12 video frames at 25 fps.
    noise           ``[C, latent_frames_per_block, h, w]``: the block's initial latents.

Every input is moved to the model's device and dtype (bf16 on GPU, float32 on CPU); outputs are in
that dtype. A wrong shape or call order raises :class:`StepperInputError` before any state changes.

API
    prefill(ref, motion, text)        text K/V + sink call; empties the rings; block_index = 0
    set_text(text)                    new prompt only (text K/V), stream position kept
    refresh_sink(ref, motion=None)    re-run the sink call (motion None: the prefill's); rings kept
    step_block(audio, noise)          all steps of one block -> clean latents; advances block_index
    encode_audio / denoise_step(step, x, audio) / advance(x0) / refresh_sink_if_due()
                                      the pieces of step_block, for a partial stepper (TPP rank)
    reset()                           empty the rings, block_index = 0 (sink and text kept)
    block_index, frame_index, clip_noise_shape, state_nbytes, sink_kv(layer), ref_offsets

State (bounded: allocated once in ``__init__``, never grown)
    * one :class:`StepRing` per denoising step (timestep forcing: step s of every block reads and writes
      ring s only; ring s holds RoPE'd K and V of the previous blocks' inputs at noise level t_s). The
      ring holds exactly one clip of latent frames and wraps; the current block is written before it
      attends. :meth:`denoise_step` touches only ``rings[step]`` plus the shared, read-only sink and
      text K/V.
    * one :class:`SinkCache` shared by the steps: un-rotated K of the [reference ; FramePack motion]
      tokens from the t=0 sink call (their V is copied into each step's buffer, next to its ring).
      Every denoising call re-rotates it: the reference to temporal position ``max(base, F + Delta)``
      (Delta drawn per call: the rolling sink frame), the motion tokens to fixed negative positions.
    * the text cross-attention K/V per layer (constant per session).
    * a stepper may hold only some steps (``steps=[s]``): a TPP rank runs ``denoise_step(s, ...)`` then
      ``advance()`` per block and hands the latents to the rank holding step s+1.

Temporal positions are absolute (``frame_index`` never wraps) and computed on demand, so a stream has
no position limit (the reference's table stops at 45000 latent frames, about 2 h).

Sink refresh: :meth:`refresh_sink` re-runs the sink call (ring and block counter kept). With
``streaming.sink_refresh == "clip1_first_latent"`` (TPP semantics) :meth:`step_block` does it by itself
before the first block of clip 1, with latent frame 0 of block 0's output and the prefill's motion
latents. ``"none"`` keeps the first sink forever (the reference single-GPU default).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .audio_encoder import encode_audio_block
from .config import ConfigError, LatentGeometry, StreamingConfig
from .dit import CausalS2VDiT
from .injector import attend
from .rope import (
    apply_rope,
    fused_ring_rotation,
    grid_positions,
    rope_cos_sin,
    rotation,
    subsampled_indices,
)
from .sampler import euler_update, flow_match_schedule
from .step_graphs import GraphContext, StepGraphs

logger = logging.getLogger(__name__)


class StepperInputError(ValueError):
    """An input tensor of the stepper has the wrong shape or the call order is wrong."""


@dataclass
class AudioTokens:
    """Audio conditioning of one block: ``tokens [F, n_tok, d]`` and ``glob [F, d]``."""

    tokens: torch.Tensor
    glob: torch.Tensor


class StepRing:
    """KV buffer of one denoising step, ``[layers, sink_capacity + ring_tokens, heads, head_dim]`` for K and V.

    Rows ``[sink_capacity, ...)`` are the ring: RoPE'd K and V of the blocks at this step's noise level.
    Layout "contiguous": rows ``[sink_capacity - sink_length, sink_capacity)`` hold this step's copy of the
    sink: V is copied at every sink (re)fill, K is re-rotated into place by every call. Keys of a call are
    then one contiguous slice ``[sink_capacity - sink_length, sink_capacity + valid)`` -- no concatenation
    per layer. Layout "compact": ``sink_capacity`` is 0 and every call concatenates [sink ; ring].
    """

    def __init__(self, layers: int, sink_capacity: int, ring_tokens: int, heads: int, head_dim: int,
                 device, dtype) -> None:
        self.sink_capacity = sink_capacity
        self.ring_tokens = ring_tokens
        self.k = torch.zeros(layers, sink_capacity + ring_tokens, heads, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class SinkCache:
    """Un-rotated K of the conditioning tokens, ``[layers, capacity, heads, head_dim]``, shared by steps.
    Their V lives here too in the "compact" layout, else it is copied into every :class:`StepRing`."""

    def __init__(self, layers: int, capacity: int, heads: int, head_dim: int, device, dtype,
                 with_values: bool) -> None:
        self.k = torch.zeros(layers, capacity, heads, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k) if with_values else None
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * (1 if self.v is None else 2)


class _InferenceAttention:
    """Self-attention of a denoising call: ring write-then-read plus the re-rotated sink."""

    def __init__(self, ring: StepRing, sink: SinkCache, noisy_rot, sink_rot, slot: int | torch.Tensor,
                 valid: int) -> None:
        self.ring, self.sink = ring, sink
        self.noisy_rot, self.sink_rot = noisy_rot, sink_rot
        # slot: the block's first ring row (an int), or the buffer rows it writes as a tensor (a CUDA
        # graph reads them from a fixed address: step_graphs.py)
        self.slot, self.valid = slot, valid

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, cap, ns = q.shape[0], self.ring.sink_capacity, self.sink.length
        buf_k, buf_v = self.ring.k[layer], self.ring.v[layer]
        fused = fused_ring_rotation(q, self.noisy_rot) if cap and isinstance(self.slot, torch.Tensor) else None
        if fused is not None:  # CUDA, compiled: one kernel rotates and stores (the graphed calls)
            q = fused(buf_k, buf_v, self.slot, q, k, v, self.sink.k[layer, :ns], torch.view_as_real(self.noisy_rot),
                      torch.view_as_real(self.sink_rot), cap - ns)
            return attend(q, buf_k[cap - ns:cap + self.valid], buf_v[cap - ns:cap + self.valid])
        if isinstance(self.slot, torch.Tensor):
            buf_k.index_copy_(0, self.slot, apply_rope(k, self.noisy_rot))
            buf_v.index_copy_(0, self.slot, v)
        else:
            start = cap + self.slot
            buf_k[start:start + n] = apply_rope(k, self.noisy_rot)
            buf_v[start:start + n] = v
        sink_k = apply_rope(self.sink.k[layer, :ns], self.sink_rot)
        end = cap + self.valid
        # Attention is order-free and positions live inside K, so [sink ; ring] needs no mask.
        if cap:
            buf_k[cap - ns:cap] = sink_k
            keys, values = buf_k[cap - ns:end], buf_v[cap - ns:end]
        else:
            keys = torch.cat([sink_k, buf_k[:end]])
            values = torch.cat([self.sink.v[layer, :ns], buf_v[:end]])
        return attend(apply_rope(q, self.noisy_rot), keys, values)


class _SinkAttention:
    """Self-attention of the sink call: bidirectional over the sink tokens; stores un-rotated K and
    copies V into every step's buffer."""

    def __init__(self, sink: SinkCache, rings: list[StepRing], rot) -> None:
        self.sink, self.rings, self.rot = sink, rings, rot

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = k.shape[0]
        self.sink.k[layer, :n] = k
        if self.sink.v is not None:
            self.sink.v[layer, :n] = v
        for ring in self.rings:
            if ring.sink_capacity:
                ring.v[layer, ring.sink_capacity - n:ring.sink_capacity] = v
        return attend(apply_rope(q, self.rot), apply_rope(k, self.rot), v)


class CausalStepper:
    """Streams blocks through the DiT. See the module docstring for the API and the state it keeps."""

    def __init__(
        self,
        model: CausalS2VDiT,
        streaming: StreamingConfig,
        geometry: LatentGeometry,
        *,
        rope_rng: random.Random | None = None,
        steps: Sequence[int] | None = None,
    ) -> None:
        cfg = model.config
        self.model, self.streaming, self.geometry = model, streaming, geometry
        self.device, self.dtype = model.device, model.param_dtype
        if streaming.ring_latent_frames % streaming.latent_frames_per_block:
            raise ConfigError("the ring length must be a whole number of blocks")
        self.tokens_per_frame = geometry.tokens_per_frame
        self.block_tokens = streaming.latent_frames_per_block * self.tokens_per_frame
        self.ring_tokens = streaming.ring_latent_frames * self.tokens_per_frame
        self.sink_tokens = geometry.sink_tokens(streaming)
        capacity = streaming.sink_capacity_tokens or self.sink_tokens
        if capacity < self.sink_tokens:
            raise ConfigError(f"sink capacity {capacity} < {self.sink_tokens} tokens needed at this size")

        layers, heads, hd = cfg.num_layers, cfg.num_heads, cfg.head_dim
        self.owned_steps = tuple(range(streaming.num_steps)) if steps is None else tuple(sorted(set(steps)))
        if not self.owned_steps or any(not 0 <= s < streaming.num_steps for s in self.owned_steps):
            raise ConfigError(f"steps {steps} must be a non-empty subset of 0..{streaming.num_steps - 1}")
        # rings[s] is None for a step that another stepper (another GPU) holds.
        compact = streaming.kv_layout == "compact"
        self.rings: list[StepRing | None] = [
            StepRing(layers, 0 if compact else capacity, self.ring_tokens, heads, hd, self.device, self.dtype)
            if s in self.owned_steps else None
            for s in range(streaming.num_steps)
        ]
        self.sink = SinkCache(layers, capacity, heads, hd, self.device, self.dtype, with_values=compact)
        self.text_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

        self.schedule = flow_match_schedule(streaming.num_steps, streaming.shift, streaming.num_train_timesteps)
        # Only num_steps + 1 distinct timesteps exist: embed them once (exact, saves the time MLPs).
        with torch.no_grad():
            f = streaming.latent_frames_per_block
            self._step_temb = [
                model.time_embed(torch.full((f,), t, dtype=torch.float32)) for t in self.schedule.timesteps
            ]
            self._sink_temb = model.time_embed(torch.zeros(1, dtype=torch.float32))

        if rope_rng is None and streaming.ref_rope_offset_mode == "random":
            rope_rng = random.Random(streaming.ref_rope_seed)
        self.rope_rng = rope_rng
        self._build_rope_tables()
        # the sink call's RoPE: the reference at the base frame, fixed for the stepper's life (a graph reads it)
        self.sink_call_rot = rotation(self.sink_rope(streaming.ref_rope_base_frame), self.dtype)

        self.block_index = 0
        self._motion_latents: torch.Tensor | None = None
        self._pending_refresh_ref: torch.Tensor | None = None
        self.ref_offsets: list[int] = []  # Delta of the most recent block's calls (inspection/tests)
        self.graphs: StepGraphs | None = None  # CUDA graphs of the denoising and sink calls (use_graphs)

    def use_graphs(self, context: GraphContext | None) -> None:
        """Run the denoising and sink calls through :class:`StepGraphs`: CUDA graphs recorded at the prefill
        (one per step and ring length, one of the sink call), or (``context`` None) the same static-buffer
        path run eagerly."""
        self.graphs = StepGraphs(self, context)

    # ---- geometry / RoPE ------------------------------------------------------------------------

    @property
    def clip_noise_shape(self) -> tuple[int, int, int, int]:
        g = self.geometry
        return (self.model.config.in_dim, self.streaming.ring_latent_frames, g.latent_height, g.latent_width)

    @property
    def frame_index(self) -> int:
        """Absolute latent frame of the next block's first frame (never wraps)."""
        return self.block_index * self.streaming.latent_frames_per_block

    def _cos_sin(self, positions: torch.Tensor) -> torch.Tensor:
        cs = rope_cos_sin(positions, self.model.config.head_dim, self.streaming.rope_theta, self.streaming.rope_fp16_table)
        if self.device.type == "cuda":
            # from pinned memory, asynchronously: a copy from pageable memory first waits for the stream,
            # i.e. for the previous step's DiT call, and the GPU then idles while this thread prepares the next
            return cs.pin_memory().to(self.device, non_blocking=True)
        return cs.to(self.device)

    def _build_rope_tables(self) -> None:
        g, s = self.geometry, self.streaming
        gh, gw = g.grid_height, g.grid_width
        rows, cols = torch.arange(gh), torch.arange(gw)
        self._grid_rows, self._grid_cols = rows, cols
        self._noisy_rope_cache: tuple[int, torch.Tensor] | None = None
        motion = [
            grid_positions([s.motion_rope_frames_1x], rows, cols),
            grid_positions([s.motion_rope_frames_2x], subsampled_indices(gh, g.latent_height // 4),
                           subsampled_indices(gw, g.latent_width // 4)),
            grid_positions(list(s.motion_rope_frames_4x), subsampled_indices(gh, g.latent_height // 8),
                           subsampled_indices(gw, g.latent_width // 8)),
        ]
        self._motion_positions = torch.cat(motion)
        self._motion_rope = self._cos_sin(self._motion_positions)

    def ref_rope_frame(self, frame: int, offset: int) -> int:
        return max(self.streaming.ref_rope_base_frame, frame + offset)

    def sink_rope(self, ref_frame: int) -> torch.Tensor:
        """cos/sin of the sink tokens with the reference at temporal position ``ref_frame``."""
        ref = self._cos_sin(grid_positions([ref_frame], self._grid_rows, self._grid_cols))
        return torch.cat([ref, self._motion_rope])

    def noisy_rope(self, frame: int) -> torch.Tensor:
        """cos/sin of a block starting at latent ``frame`` (kept for the block's other steps)."""
        if self._noisy_rope_cache is None or self._noisy_rope_cache[0] != frame:
            f = self.streaming.latent_frames_per_block
            positions = grid_positions(list(range(frame, frame + f)), self._grid_rows, self._grid_cols)
            self._noisy_rope_cache = (frame, self._cos_sin(positions))
        return self._noisy_rope_cache[1]

    def _draw_offset(self) -> int:
        s = self.streaming
        if s.ref_rope_offset_mode == "fixed":
            return s.ref_rope_fixed_offset
        return self.rope_rng.randint(*s.ref_rope_offset_range)

    # ---- inputs ---------------------------------------------------------------------------------

    def _latents(self, x: torch.Tensor, name: str, frames: int | None) -> torch.Tensor:
        if x.ndim == 5 and x.shape[0] == 1:
            x = x[0]
        g, c = self.geometry, self.model.config.in_dim
        if x.ndim != 4 or x.shape[0] != c or tuple(x.shape[2:]) != (g.latent_height, g.latent_width):
            raise StepperInputError(
                f"{name} must be [{c}, T, {g.latent_height}, {g.latent_width}], got {tuple(x.shape)}"
            )
        if frames is not None and x.shape[1] != frames:
            raise StepperInputError(f"{name} must have {frames} latent frame(s), got {x.shape[1]}")
        return x.to(device=self.device, dtype=self.dtype)

    def _audio(self, audio: torch.Tensor) -> torch.Tensor:
        cfg, frames = self.model.config, self.streaming.video_frames_per_block
        if audio.ndim == 3:
            audio = audio[None]
        expected = (1, cfg.num_audio_layers, cfg.audio_dim, frames)
        if tuple(audio.shape) != expected:
            raise StepperInputError(f"audio block must be {list(expected)}, got {list(audio.shape)}")
        return audio.to(device=self.device, dtype=self.dtype)

    # ---- session --------------------------------------------------------------------------------

    @torch.no_grad()
    def set_text(self, text_context: torch.Tensor) -> None:
        """Embed the prompt and cache its per-layer cross-attention K/V."""
        text_kv = self.model.text_kv(self.model.embed_text(text_context))
        if self.text_kv is None or self.graphs is None:
            self.text_kv = text_kv
            return
        for (k, v), (new_k, new_v) in zip(self.text_kv, text_kv, strict=True):  # in place: the graphs read these addresses
            k.copy_(new_k)
            v.copy_(new_v)

    @torch.no_grad()
    def prefill(self, ref_latent: torch.Tensor, motion_latents: torch.Tensor, text_context: torch.Tensor) -> None:
        """Start a session: text K/V, sink K/V, empty rings, block counter 0."""
        self.set_text(text_context)
        self.reset()
        self._motion_latents = self._latents(motion_latents, "motion_latents", None)
        self.refresh_sink(ref_latent, self._motion_latents)
        if self.graphs is not None:
            try:
                wrote = self.graphs.record_ahead()
            except RuntimeError:  # a failed capture must not fail the session: its calls run ungraphed
                logger.exception("recording the CUDA graphs at the prefill failed: this session runs without them")
                self.graphs, wrote = None, True
            if wrote:
                self.reset()  # an eager first call wrote placeholder rows into the rings
        if self.graphs is not None:
            # after the sink call above: when it ran eagerly, it compiled what the capture records
            self.graphs.record_sink(self._latents(ref_latent, "ref_latent", 1), self._motion_latents)

    def reset(self) -> None:
        """Forget the rings and the position (the sink and text are kept)."""
        for ring in self.held_rings:  # the ring part only: the sink copies stay valid
            ring.k[:, ring.sink_capacity:].zero_()
            ring.v[:, ring.sink_capacity:].zero_()
        self.block_index = 0
        self._pending_refresh_ref = None

    @torch.no_grad()
    def refresh_sink(self, ref_latent: torch.Tensor, motion_latents: torch.Tensor | None = None,
                     trace: dict | None = None) -> None:
        """Re-run the t=0 sink call (spec 2.10); rings and the block counter are kept."""
        if self.text_kv is None:
            raise StepperInputError("set_text/prefill must run before refresh_sink")
        ref = self._latents(ref_latent, "ref_latent", 1)
        motion = self._motion_latents if motion_latents is None else self._latents(motion_latents, "motion_latents", None)
        self.sink.length = 0  # until the call has written it: a failed call leaves no half-written sink in use
        if self.graphs is not None and trace is None and self.graphs.sink_recorded_for(ref, motion):
            self.graphs.run_sink(ref, motion)
        else:
            self.sink_call(ref, motion, trace=trace)
        self.sink.length = self.sink_tokens

    def sink_call(self, ref: torch.Tensor, motion: torch.Tensor, trace: dict | None = None) -> None:
        """The sink call of :meth:`refresh_sink` on inputs already on the device: writes the sink K and each
        ring's sink V (every op on the device, nothing read back: a CUDA graph can record it)."""
        tokens = self.model.embed_sink(ref, motion)
        if tokens.shape[0] != self.sink_tokens:
            raise StepperInputError(f"sink has {tokens.shape[0]} tokens, expected {self.sink_tokens}")
        if trace is not None:
            trace["x_in_blocks"] = tokens
        e, e0 = self._sink_temb
        cache = _SinkAttention(self.sink, self.held_rings, self.sink_call_rot)
        # The last block's output is never used: its K/V are written by its self-attention.
        self.model.run_blocks(tokens[None], e0, self.text_kv, cache,
                              norm3_input_bf16=self.streaming.norm3_input_bf16)

    # ---- denoising ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_audio(self, audio_block: torch.Tensor, trace: dict | None = None) -> AudioTokens:
        """Audio tokens of one block (computed once per block, shared by its steps)."""
        out = encode_audio_block(
            self.model.casual_audio_encoder,
            self._audio(audio_block),
            left_pad_frames=self.streaming.motion_frames,
            keep_frames=self.streaming.latent_frames_per_block,
        )
        if trace is not None:
            trace.update({f"audio_{k}": v for k, v in out.items()})
        return AudioTokens(tokens=out["tokens"][0], glob=out["global"][0, :, 0])

    @torch.no_grad()
    def denoise_step(self, step: int, x: torch.Tensor, audio: AudioTokens, *,
                     ref_offset: int | None = None, trace: dict | None = None) -> torch.Tensor:
        """One DiT call: velocity ``[C, F, h, w]`` of block ``self.block_index`` at denoising step ``step``.

        Writes the block's K/V into ``rings[step]``; does not advance the block counter.
        ``ref_offset`` overrides the drawn rolling-RoPE Delta.
        """
        if self.text_kv is None or self.sink.length == 0:
            raise StepperInputError("prefill must run before denoising")
        if not 0 <= step < len(self.rings) or self.rings[step] is None:
            raise StepperInputError(f"step {step} is not held by this stepper (it holds {list(self.owned_steps)})")
        x = self._latents(x, "noise", self.streaming.latent_frames_per_block)
        frame = self.frame_index
        offset = self._draw_offset() if ref_offset is None else ref_offset
        self.ref_offsets.append(offset)
        start = frame * self.tokens_per_frame
        slot = start % self.ring_tokens
        valid = slot + self.block_tokens if start < self.ring_tokens else self.ring_tokens
        noisy_rope = self.noisy_rope(frame)
        sink_rope = self.sink_rope(self.ref_rope_frame(frame, offset))
        noisy_rot, sink_rot = rotation(noisy_rope, self.dtype), rotation(sink_rope, self.dtype)
        if self.graphs is not None and trace is None and self.graphs.covers(valid):
            return self.graphs.run(step, x, audio, slot, noisy_rot, sink_rot, valid)
        cache = _InferenceAttention(self.rings[step], self.sink, noisy_rot, sink_rot, slot, valid)
        if trace is not None:
            trace.update(noisy_rope=noisy_rope, sink_rope=sink_rope)
        return self.velocity(step, x, audio, cache, trace=trace)

    def velocity(self, step: int, x: torch.Tensor, audio: AudioTokens, cache: _InferenceAttention,
                 trace: dict | None = None) -> torch.Tensor:
        """The DiT call of :meth:`denoise_step` once its positions are in ``cache`` (every op on the
        device, nothing read back: a CUDA graph can record it)."""
        tokens = self.model.embed_noisy(x)
        if trace is not None:
            trace["x_in_blocks"] = tokens
        e, e0 = self._step_temb[step]
        out = self.model.run_blocks(tokens, e0, self.text_kv, cache, norm3_input_bf16=self.streaming.norm3_input_bf16,
                                    audio=(audio.tokens, audio.glob), trace=trace)
        g = self.geometry
        return self.model.predict_velocity(out, e, g.grid_height, g.grid_width)

    @torch.no_grad()
    def step_block(self, audio_block: torch.Tensor, noise: torch.Tensor,
                   on_velocity: Callable[[int, int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Denoise one block with all steps and advance; returns the clean latents ``[C, F, h, w]``.

        ``on_velocity(block_index, step, velocity)`` is called after every DiT call (debugging).
        """
        s = self.streaming
        if len(self.owned_steps) != s.num_steps:
            raise StepperInputError("step_block needs every step; a partial stepper uses denoise_step + advance")
        self.refresh_sink_if_due()
        audio = self.encode_audio(audio_block)
        x = self._latents(noise, "noise", s.latent_frames_per_block)
        self.ref_offsets = []
        sig = self.schedule.sigmas
        for step in range(s.num_steps):
            v = self.denoise_step(step, x, audio)
            if on_velocity is not None:
                on_velocity(self.block_index, step, v)
            x = euler_update(x, v, sig[step], sig[step + 1])
        self.advance(x)
        return x

    def advance(self, clean_latents: torch.Tensor | None = None) -> None:
        """Finish the current block: the next calls belong to the next block (positions move on).

        A partial stepper (TPP rank) calls this after its own denoise_step of each block; pass the
        block's clean latents for block 0 so the automatic sink refresh can use them.
        """
        if self.block_index == 0 and clean_latents is not None:
            self._pending_refresh_ref = clean_latents[:, :1].clone()
        self.block_index += 1

    def refresh_sink_if_due(self) -> bool:
        """Apply the ``sink_refresh`` policy before the next block; True when the sink was re-run."""
        s = self.streaming
        if s.sink_refresh == "clip1_first_latent" and self.block_index == s.blocks_per_clip \
                and self._pending_refresh_ref is not None:
            self.refresh_sink(self._pending_refresh_ref)
            self._pending_refresh_ref = None
            return True
        return False

    @property
    def held_rings(self) -> list[StepRing]:
        return [ring for ring in self.rings if ring is not None]

    def sink_kv(self, layer: int, step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The sink's un-rotated K and its V (as held by ``step``'s buffer, default the first held) at
        ``layer``: ``[Nc, H, dh]``."""
        n = self.sink.length
        if self.sink.v is not None:
            return self.sink.k[layer, :n], self.sink.v[layer, :n]
        ring = self.held_rings[0] if step is None else self.rings[step]
        return self.sink.k[layer, :n], ring.v[layer, ring.sink_capacity - n:ring.sink_capacity]

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the rings, the sink and the text K/V."""
        total = sum(r.nbytes for r in self.held_rings) + self.sink.nbytes
        if self.text_kv is not None:
            total += sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.text_kv)
        return total
