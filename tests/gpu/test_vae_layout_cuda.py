"""The streaming decoder channels-last (WanVaeCodec.use_channels_last, engine option vae_channels_last, on by
default on CUDA) on a CUDA device: the layout reaches the caches, the frames stay those of the default layout
within bf16 rounding, and the decoder's CUDA graph replays it exactly."""

from __future__ import annotations

import torch

from live_avatar.core.engines.liveavatar.tiny_weights import tiny_vae
from live_avatar.core.engines.liveavatar.vae_stream import (
    VaeStreamConfig,
    WanVaeCodec,
    to_uint8_frames,
)


def _inputs():
    g = torch.Generator().manual_seed(13)
    motion = torch.randn(16, 19, 16, 24, generator=g).cuda()
    return motion, [torch.randn(16, 3, 16, 24, generator=g).cuda() for _ in range(4)]


def test_channels_last_reaches_the_caches_and_keeps_the_frames():
    motion, blocks = _inputs()
    plain = WanVaeCodec(tiny_vae(seed=3).to("cuda", torch.bfloat16), VaeStreamConfig())
    last = WanVaeCodec(tiny_vae(seed=3).to("cuda", torch.bfloat16), VaeStreamConfig())
    last.use_channels_last()
    a, b = plain.stream(), last.stream()
    a.start(motion)
    b.start(motion)
    for block in blocks:
        expected, got = to_uint8_frames(a.decode_block(block)), to_uint8_frames(b.decode_block(block))
        # other cuDNN kernels, the same arithmetic in bf16: a few uint8 levels at most
        assert (got.int() - expected.int()).abs().max() <= 8
        assert (got.float() - expected.float()).abs().mean() < 0.5
    cached = [e for e in b._cache if isinstance(e, torch.Tensor) and e.ndim == 5 and e.shape[1] > 1]
    in_layout = [e.is_contiguous(memory_format=torch.channels_last_3d) and not e.is_contiguous() for e in cached]
    assert sum(in_layout) > len(cached) // 2, f"{sum(in_layout)} of {len(cached)} cache entries channels-last"


def test_the_decoders_cuda_graph_replays_the_channels_last_decode_exactly():
    motion, blocks = _inputs()
    plain, graphed = (WanVaeCodec(tiny_vae(seed=3).to("cuda", torch.bfloat16), VaeStreamConfig()) for _ in range(2))
    plain.use_channels_last()
    graphed.use_channels_last()
    graphed.decoder_graphs = "cuda"
    a, b = plain.stream(), graphed.stream()
    a.start(motion)
    b.start(motion)
    for block in blocks:
        expected, got = a.decode_block(block), b.decode_block(block)
        assert torch.equal(got, expected), f"max diff {(got.float() - expected.float()).abs().max()}"
    assert b._graph is not None and b._graph.graph is not None
