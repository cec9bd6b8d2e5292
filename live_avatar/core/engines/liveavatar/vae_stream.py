"""Wan2.1 VAE for the liveavatar engine: normalised encoding and streaming ("online") decoding.

Built on diffusers ``AutoencoderKLWan`` (its default config is the Wan2.1 VAE). Two jobs:

* ``WanVaeCodec.encode_portrait`` turns a portrait into the reference latent and the motion latents
  (spec §3.2 / §6.3): the VAE encoding of ``motion_frames`` (73) copies of the image gives 19 motion
  latents. The encoder is causal, so latent #1 of that encoding *is* latent #1 of a 5-copy encoding
  (the reference latent of the single-GPU / live drivers): one encode gives both.
* ``LatentVideoStream`` decodes one latent frame at a time while keeping the decoder's causal-conv
  caches between calls (spec §6.2). ``AutoencoderKLWan.decode`` clears its caches on every call and
  cannot stream, so we drive ``vae.decoder`` directly with a cache list owned by the stream (one per
  session, so several sessions may share one VAE). Decoding frame by frame with a kept cache is the
  same computation as ``vae.decode`` of the concatenated latents.

Session start (spec §6.2, §11 item 17): the caches are primed by decoding the first
``prime_latents`` (7) motion latents and discarding the pixels; then each block's latents are
decoded with the caches kept, and the first ``drop_first_frames`` (3) frames of the session are
dropped. Because the live runtime wants exactly ``4·latents`` frames per block, the dropped frames
may instead be replaced by copies of the first kept frame (``dropped_frames="hold"``): frame k of
the session then still shows the generated frame k, so audio and video stay aligned (the reference,
which drops them, puts the video 3 frames ahead of the audio).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan


@dataclass(frozen=True)
class VaeStreamConfig:
    motion_frames: int = 73  # pixel frames of motion context (19 latents)
    prime_latents: int = 7  # motion latents decoded at session start to fill the causal caches
    drop_first_frames: int = 3  # frames of the session's first block that the reference discards
    dropped_frames: Literal["drop", "hold"] = "hold"  # drop them, or repeat the first kept frame
    reference_latent: Literal["five_copies", "single_frame"] = "five_copies"  # spec §3.2 item 3


@dataclass
class PortraitLatents:
    reference: torch.Tensor  # [16, 1, h, w], normalised
    motion: torch.Tensor  # [16, T_m, h, w], normalised, oldest first


def count_causal_convs(module: torch.nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


class WanVaeCodec:
    """Normalised encode/decode around one ``AutoencoderKLWan`` (shared by all sessions of an engine)."""

    def __init__(self, vae: "AutoencoderKLWan", config: VaeStreamConfig | None = None) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.config = config or VaeStreamConfig()
        param = next(vae.parameters())
        self.device, self.dtype = param.device, param.dtype
        z_dim = vae.config.z_dim
        # The reference keeps mean and 1/std in the VAE dtype (bf16 on GPU); so do we.
        shape = (z_dim, 1, 1, 1)
        self._mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(shape).to(self.device, self.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32)
        self._inv_std = inv_std.view(shape).to(self.device, self.dtype)
        self.decoder_conv_count = count_causal_convs(vae.decoder)
        self._decoder = vae.decoder  # or its torch.compile'd wrapper (compile_decoder)
        # the streaming decoder's layout: its 3D convolutions' weights, each latent frame it is given and its
        # causal caches (use_channels_last)
        self.memory_format = torch.contiguous_format
        # "cuda": steady-state decoder calls replay a CUDA graph per stream; "static": the same fixed-buffer
        # path run eagerly (CPU tests); None: the plain calls
        self.decoder_graphs: str | None = None
        self.temporal_ratio = 2 ** sum(vae.config.temperal_downsample)
        self.spatial_ratio = 2 ** (len(vae.config.dim_mult) - 1)

    @property
    def z_dim(self) -> int:
        return int(self.vae.config.z_dim)

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        return (mu.to(self.dtype) - self._mean) * self._inv_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.to(self.dtype) / self._inv_std + self._mean

    @torch.inference_mode()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixels [3, T, H, W] in [-1, 1] -> normalised latents [16, 1 + (T-1)/4, H/8, W/8] (the mean, no sampling)."""
        if video.ndim != 4 or video.shape[0] != 3:
            raise ValueError(f"expected video [3, T, H, W], got {tuple(video.shape)}")
        x = video.to(self.device, self.dtype).unsqueeze(0)
        mu = self.vae.encode(x).latent_dist.mode()
        return self.normalize(mu[0])

    @torch.inference_mode()
    def encode_portrait(self, image: torch.Tensor) -> PortraitLatents:
        """image [3, H, W] in [-1, 1] -> reference latent and motion latents (spec §3.2 items 3-4)."""
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected image [3, H, W], got {tuple(image.shape)}")
        cfg = self.config
        copies = image.unsqueeze(1).expand(3, cfg.motion_frames, *image.shape[1:])
        motion = self.encode(copies)
        if cfg.reference_latent == "five_copies":
            # causal encoder: latent #1 of 73 copies equals latent #1 of 5 copies
            reference = motion[:, 1:2].clone()
        else:
            reference = self.encode(image.unsqueeze(1))
        return PortraitLatents(reference=reference, motion=motion)

    @torch.inference_mode()
    def decode_clip(self, z: torch.Tensor) -> torch.Tensor:
        """Whole-clip decode with diffusers' own path (fresh caches): latents [16, T, h, w] -> pixels [3, T', H, W]."""
        out = self.vae.decode(self.denormalize(z).unsqueeze(0)).sample
        return out[0]

    def stream(self) -> "LatentVideoStream":
        return LatentVideoStream(self)

    def use_channels_last(self) -> None:
        """Run the streaming decoder channels-last (``torch.channels_last_3d``): its 3D convolutions' weights
        now, each latent frame and cache entry as it goes. cuDNN's Hopper convolutions want channels last;
        in the default layout they transpose around every convolution (~13 ms of a 320x512 block's decode in
        an H200 profile). Measured on an H200 (bench/vae_layout.py): 77.3 -> 64.8 ms a 320x512 block compiled,
        121.9 -> 109.1 eager; the same arithmetic in other kernels (bf16 pixels within 0.05 of each other,
        as the compiled decoder is of the eager one). Call before :meth:`compile_decoder`."""
        with torch.no_grad():
            for param in self.vae.decoder.parameters():
                if param.ndim == 5:  # Module.to(memory_format=...) wants every parameter 5-D
                    param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
        self.memory_format = torch.channels_last_3d

    def configure(self, *, channels_last: bool, compile_decoder: bool, backend: str = "inductor") -> None:
        """The engine's VAE options (``vae_channels_last``, ``compile_vae``), in the order they need: the
        compiled decoder is traced in the layout it will run."""
        if channels_last:
            self.use_channels_last()
        if compile_decoder:
            self.compile_decoder(backend=backend)

    @property
    def decoder_compiled(self) -> bool:
        return self._decoder is not self.vae.decoder

    def compile_decoder(self, **compile_kwargs) -> None:
        """torch.compile the per-latent decoder call (GPU). Three states: a fresh cache, the second latent
        (one cached frame), and the steady state; the cache list is mutated in place as in eager. On a GPU
        the decoder also graph-breaks into nested frames that a second session compiles again (the engine's
        warm-up runs sessions until one compiles nothing)."""
        # static shapes: dynamo's automatic-dynamic would otherwise turn the cache's time dimension (1 then 2
        # frames) and the second frame size into symbolic shapes, whose kernels are slower (seen on an H200)
        compile_kwargs.setdefault("dynamic", False)
        self._decoder = torch.compile(self.vae.decoder, **compile_kwargs)


class DecoderGraph:
    """One latent's decoder call with the causal caches in fixed buffers, recorded as a CUDA graph.

    Once the caches have their steady shapes (every entry 2 frames, from the third latent on), each call
    is the same kernel sequence on the same shapes: recorded once, a latent is one launch instead of
    hundreds. Measured at 320x512 on an H200 the decode is GPU-bound, not launch-bound (120 vs 126 ms a
    block), so the engine option ``vae_graphs`` is off by default; it pays where launches are slow. The
    call's new cache entries are copied back into the buffers it read, inside the graph, so the next
    replay sees them. ``record`` False runs that same buffer path eagerly (the CPU tests check it against
    the plain calls).
    """

    def __init__(self, decoder, cache: list, frame: torch.Tensor, *, record: bool) -> None:
        self.decoder = decoder
        self.frame = frame.clone()
        self.state = [None if entry is None else entry.clone() for entry in cache]
        self.graph = None
        self.out: torch.Tensor | None = None
        if record:
            from .cuda_graph import record_graph

            # a private pool: with overlap_vae this replays on its own thread while the DiT's graphs run
            self.graph, self.out = record_graph(self._call, frame.device)

    @staticmethod
    def steady(before: list, after: list) -> bool:
        """Whether a call left every cache entry as it found it in kind and shape: a tensor of the same
        shape, or None for a convolution that keeps no cache (what a graph can hold in fixed buffers)."""
        return all((a is None and b is None)
                   or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape)
                   for a, b in zip(before, after, strict=True))

    def _call(self) -> torch.Tensor:
        cache = list(self.state)
        out = self.decoder(self.frame, feat_cache=cache, feat_idx=[0])
        for kept, fresh in zip(self.state, cache, strict=True):
            if fresh is not kept:
                kept.copy_(fresh)
        return out

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        """The decoder output for ``frame`` (a fresh tensor); the buffers advance to the next latent."""
        self.frame.copy_(frame)
        if self.graph is None:
            return self._call()
        self.graph.replay()
        return self.out.clone()


class LatentVideoStream:
    """Streaming decoder for one session: one latent frame per decoder call, causal caches kept."""

    def __init__(self, codec: WanVaeCodec) -> None:
        self.codec = codec
        self._cache: list = [None] * codec.decoder_conv_count
        self._graph: DecoderGraph | None = None
        self._steady = False  # the last plain call kept every cache shape: the next one can be recorded
        self._drop_pending = 0
        self.latents_decoded = 0
        self.frames_emitted = 0
        self.frames_dropped = 0

    def reset(self) -> None:
        self._cache = [None] * self.codec.decoder_conv_count
        self._graph, self._steady = None, False
        self._drop_pending = 0
        self.latents_decoded = 0
        self.frames_emitted = 0
        self.frames_dropped = 0

    @torch.inference_mode()
    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents [16, n, h, w] -> pixels [3, m, H, W] in [-1, 1], caches kept.

        A fresh cache's first latent yields 1 frame, every later latent ``temporal_ratio`` (4) frames.
        """
        return torch.cat(list(self.iter_latent_parts(z)), dim=1)

    def iter_latent_parts(self, z: torch.Tensor) -> Iterator[torch.Tensor]:
        """:meth:`decode_latents` a latent frame at a time, lazily (pixels [3, m_i, H, W] each): each latent
        frame's decode is queued on the device only when the next part is asked for, so a caller can take a part's frames before the next decode is queued
        (a decoder whose launches take as long as its kernels would otherwise delay the first part until
        every part was queued). Call it under ``torch.inference_mode()``."""
        if z.ndim != 4 or z.shape[0] != self.codec.z_dim:
            raise ValueError(f"expected latents [{self.codec.z_dim}, n, h, w], got {tuple(z.shape)}")
        vae = self.codec.vae
        x = vae.post_quant_conv(self.codec.denormalize(z.to(self.codec.device)).unsqueeze(0))  # 1x1x1: stateless
        for t in range(x.shape[2]):
            # a fresh layout: the same strides for every call (a compiled decoder would recompile per clip length)
            frame = x[:, :, t : t + 1].contiguous(memory_format=self.codec.memory_format)
            out = self._decode_one(frame)[0].clamp(-1.0, 1.0)  # a copy: the output may be a graph's buffer
            self.latents_decoded += 1
            yield out

    def _decode_one(self, frame: torch.Tensor) -> torch.Tensor:
        mode = self.codec.decoder_graphs
        if self._graph is None and self._steady and mode is not None:
            self._graph = DecoderGraph(self.codec._decoder, self._cache, frame, record=mode == "cuda")
            self._cache = []  # the graph's buffers hold the caches from now on
        if self._graph is not None:
            return self._graph(frame)
        if self.codec.decoder_compiled:
            self._cache[:] = [_standard_layout(e, self.codec.memory_format) for e in self._cache]
        if mode is None:
            return self.codec._decoder(frame, feat_cache=self._cache, feat_idx=[0])
        before = list(self._cache)
        out = self.codec._decoder(frame, feat_cache=self._cache, feat_idx=[0])
        self._steady = DecoderGraph.steady(before, self._cache)  # only graphs need to know
        return out

    def start(self, motion_latents: torch.Tensor) -> None:
        """Reset the caches, prime them with the first motion latents (pixels discarded), arm the frame drop."""
        self.reset()
        prime = self.codec.config.prime_latents
        if prime > 0:
            if motion_latents.shape[1] < prime:
                raise ValueError(f"need at least {prime} motion latents to prime the decoder, got {motion_latents.shape[1]}")
            self.decode_latents(motion_latents[:, :prime])
        self._drop_pending = self.codec.config.drop_first_frames

    def decode_block(self, z: torch.Tensor) -> torch.Tensor:
        """A block's clean latents [16, n, h, w] -> its pixel frames [3, m, H, W] after the start-of-session drop.

        With ``dropped_frames="hold"`` the dropped frames are replaced by copies of the first kept frame, so
        a block always yields as many frames as were decoded.
        """
        return torch.cat(self.decode_block_parts(z), dim=1)

    def decode_block_parts(self, z: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`decode_block` as parts of one latent frame each (the start-of-session drop falls in the
        first part; a drop longer than a latent's frames merges the parts it covers)."""
        with torch.inference_mode():
            return list(self.iter_block_parts(z))

    def iter_block_parts(self, z: torch.Tensor) -> Iterator[torch.Tensor]:
        """:meth:`decode_block_parts` lazily (see :meth:`iter_latent_parts`; under ``torch.inference_mode()``)."""
        held: list[torch.Tensor] = []  # parts that the start-of-session drop covers entirely, so far
        for part in self.iter_latent_parts(z):
            if self._drop_pending <= 0:
                self.frames_emitted += part.shape[1]
                yield part
                continue
            held.append(part)
            if sum(p.shape[1] for p in held) > self._drop_pending:  # else the drop reaches into the next part
                yield self._drop_head(held)
                held = []
        if held:  # the drop covers the whole block: it keeps one frame
            yield self._drop_head(held)

    def _drop_head(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The session's first parts as one, minus the drop (at least one frame is kept), or held (``"hold"``)."""
        head = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        drop = min(self._drop_pending, head.shape[1] - 1)
        self._drop_pending -= drop
        self.frames_dropped += drop
        kept = head[:, drop:]
        if self.codec.config.dropped_frames == "hold":
            kept = torch.cat([kept[:, :1].expand(-1, drop, -1, -1), kept], dim=1)
        self.frames_emitted += kept.shape[1]
        return kept


def _standard_layout(entry, memory_format: torch.memory_format = torch.contiguous_format):
    """A cache entry with the strides of a fresh tensor in the decoder's layout (``memory_format`` for 5-D
    entries). The compiled decoder's guards check every cache tensor's strides, also those of size-1
    dimensions, which depend on how the entry was made (a slice, a concatenation, a convolution's output
    layout): a new pattern recompiles, which stalls a live session. Data already in the layout only gets a
    view with the standard strides; other data is copied."""
    if not isinstance(entry, torch.Tensor):
        return entry
    layout = memory_format if entry.ndim == 5 else torch.contiguous_format
    if not entry.is_contiguous(memory_format=layout):
        entry = entry.contiguous(memory_format=layout)
    standard = _strides(tuple(entry.shape), layout == torch.channels_last_3d)
    return entry if entry.stride() == standard else entry.as_strided(entry.shape, standard)


def _strides(shape: tuple[int, ...], channels_last: bool) -> tuple[int, ...]:
    """A fresh tensor's strides: row-major, or for channels-last [N, C, D, H, W] the order N, D, H, W, C."""
    order = (0, 2, 3, 4, 1) if channels_last else tuple(range(len(shape)))  # outermost first
    strides, step = [0] * len(shape), 1
    for dim in reversed(order):
        strides[dim] = step
        step *= shape[dim]
    return tuple(strides)


def to_uint8_frames(pixels: torch.Tensor) -> "torch.Tensor":
    """[3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] on the CPU (one rounding, as the reference's video writer)."""
    return to_uint8_frames_later(pixels)()


def to_uint8_frames_later(pixels: torch.Tensor, copy_stream: "torch.cuda.Stream | None" = None) -> Callable[[], torch.Tensor]:
    """:func:`to_uint8_frames` in two halves: the conversion is queued now, on the current stream; the
    returned function copies the frames to the host and waits for them. With a ``copy_stream`` (CUDA) the
    copy runs there, after the conversion but not behind what the current stream queued since (the next
    part's decode), so a block's first frames reach the host while its last are still being decoded."""
    x = ((pixels.float().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8).permute(1, 2, 3, 0).contiguous()
    if copy_stream is None or x.device.type != "cuda":
        return x.cpu
    converted = torch.cuda.Event()
    converted.record()

    def fetch() -> torch.Tensor:
        with torch.cuda.stream(copy_stream):
            copy_stream.wait_event(converted)
            return x.cpu()  # x stays referenced (this closure) until the copy is done: no allocator race

    return fetch
