"""The VAE decoder's CUDA graph (vae_stream.DecoderGraph) against the plain calls, on a CUDA device."""

from __future__ import annotations

import torch

from live_avatar.core.engines.liveavatar.tiny_weights import tiny_vae
from live_avatar.core.engines.liveavatar.vae_stream import VaeStreamConfig, WanVaeCodec


def test_graphed_decoder_gives_the_plain_decoders_pixels():
    vae = tiny_vae(seed=3).to("cuda", torch.bfloat16)
    g = torch.Generator().manual_seed(11)
    motion = torch.randn(16, 19, 16, 24, generator=g).cuda()
    blocks = [torch.randn(16, 3, 16, 24, generator=g).cuda() for _ in range(4)]
    plain, graphed = WanVaeCodec(vae, VaeStreamConfig()), WanVaeCodec(vae, VaeStreamConfig())
    graphed.decoder_graphs = "cuda"
    a, b = plain.stream(), graphed.stream()
    for _ in range(2):  # a restart records a new graph
        a.start(motion)
        b.start(motion)
        for block in blocks:
            expected, got = a.decode_block(block), b.decode_block(block)
            assert torch.equal(got, expected), f"max diff {(got.float() - expected.float()).abs().max()}"
        assert b._graph is not None and b._graph.graph is not None  # recorded, not the eager stand-in
