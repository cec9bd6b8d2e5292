"""Frames in parts on a CUDA device: each latent frame's uint8 frames are copied to the host on a side
stream (vae_stream.to_uint8_frames_later) while the next latent is decoded; they must be the frames of the
one blocking copy, and the first part must be on the host before the last part's decode has finished."""

from __future__ import annotations

import torch

from live_avatar.core.engines.liveavatar.tiny_weights import tiny_vae
from live_avatar.core.engines.liveavatar.vae_stream import (
    VaeStreamConfig,
    WanVaeCodec,
    to_uint8_frames,
    to_uint8_frames_later,
)


def test_parts_copied_on_a_side_stream_are_the_blocking_copys_frames():
    vae = tiny_vae(seed=3).to("cuda", torch.bfloat16)
    g = torch.Generator().manual_seed(11)
    motion = torch.randn(16, 19, 16, 24, generator=g).cuda()
    blocks = [torch.randn(16, 3, 16, 24, generator=g).cuda() for _ in range(3)]
    codec = WanVaeCodec(vae, VaeStreamConfig())
    whole, parts = codec.stream(), codec.stream()
    whole.start(motion)
    parts.start(motion)
    copy_stream = torch.cuda.Stream()
    for block in blocks:
        expected = to_uint8_frames(whole.decode_block(block))
        pixels = parts.decode_block_parts(block)
        fetches = [to_uint8_frames_later(p, copy_stream) for p in pixels]
        got = torch.cat([fetch() for fetch in fetches])
        assert torch.equal(got, expected)
        assert [p.shape[1] for p in pixels] == [4, 4, 4]
    # a slow last part: the first part's copy does not wait for it
    pixels = parts.decode_block_parts(blocks[0])
    fetches = [to_uint8_frames_later(p, copy_stream) for p in pixels]
    torch.cuda._sleep(2_000_000_000)  # ~1 s of GPU cycles queued on the current stream after the conversions
    behind = torch.cuda.Event()
    behind.record()
    fetches[0]()
    assert not behind.query(), "the first part's copy waited for work queued after it"
    torch.cuda.synchronize()
