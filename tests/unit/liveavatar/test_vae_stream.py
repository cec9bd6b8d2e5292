"""Streaming (online) VAE decode equals whole-clip decode; priming and the dropped-frame rule (spec §6.2)."""

from __future__ import annotations

import pytest
import torch

from live_avatar.core.engines.liveavatar.tiny_weights import tiny_vae
from live_avatar.core.engines.liveavatar.vae_stream import VaeStreamConfig, WanVaeCodec, to_uint8_frames

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vae():
    return tiny_vae(seed=3)


def _codec(vae, **cfg) -> WanVaeCodec:
    return WanVaeCodec(vae, VaeStreamConfig(**cfg))


@pytest.mark.parametrize("clip_seed", [0, 1, 2])
def test_stream_decode_equals_whole_clip_decode(vae, clip_seed):
    codec = _codec(vae, dropped_frames="drop")
    g = torch.Generator().manual_seed(clip_seed)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(3)]
    stream = codec.stream()
    stream.start(motion)
    streamed = [stream.decode_block(b) for b in blocks]

    whole = codec.decode_clip(torch.cat([motion[:, :7], *blocks], dim=1))
    # the 7 priming latents decode to 1 + 6*4 = 25 frames; each block then gives 12
    assert whole.shape[1] == 25 + 12 * len(blocks)
    expected = whole[:, 25:]
    got = torch.cat(streamed, dim=1)
    assert got.shape[1] == 12 * len(blocks) - 3  # the first 3 frames of the session are dropped
    torch.testing.assert_close(got, expected[:, 3:], atol=1e-5, rtol=1e-5)


def test_priming_changes_the_first_block(vae):
    """The causal caches carry the motion context: an unprimed stream decodes the same latents differently."""
    codec = _codec(vae, dropped_frames="drop")
    g = torch.Generator().manual_seed(7)
    motion, block = torch.randn(16, 19, 4, 6, generator=g), torch.randn(16, 3, 4, 6, generator=g)
    primed = codec.stream()
    primed.start(motion)
    unprimed = codec.stream()
    cold = unprimed.decode_latents(block)
    assert cold.shape[1] == 1 + 2 * 4  # a fresh cache's first latent yields a single frame
    warm = primed.decode_block(block)
    assert primed.latents_decoded == 7 + 3
    assert warm.shape[1] == 9 and primed.frames_dropped == 3
    assert (warm - cold).abs().max() > 1e-3


@pytest.mark.parametrize(("drop_first", "policy", "sizes"), [
    (3, "hold", [4, 4, 4]), (3, "drop", [1, 4, 4]),  # the start-of-session drop falls in the first part
    (5, "hold", [8, 4]), (5, "drop", [3, 4]),  # a drop past a latent's frames merges the parts it covers
])
def test_a_block_in_parts_is_the_whole_decode_cut_where_the_latents_end(vae, drop_first, policy, sizes):
    g = torch.Generator().manual_seed(13)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(2)]
    whole = _codec(vae, drop_first_frames=drop_first, dropped_frames=policy).stream()
    parts = _codec(vae, drop_first_frames=drop_first, dropped_frames=policy).stream()
    whole.start(motion)
    parts.start(motion)
    first = parts.decode_block_parts(blocks[0])
    assert [p.shape[1] for p in first] == sizes
    torch.testing.assert_close(torch.cat(first, dim=1), whole.decode_block(blocks[0]), atol=0, rtol=0)
    later = parts.decode_block_parts(blocks[1])
    assert [p.shape[1] for p in later] == [4, 4, 4]
    torch.testing.assert_close(torch.cat(later, dim=1), whole.decode_block(blocks[1]), atol=0, rtol=0)
    assert parts.frames_emitted == whole.frames_emitted and parts.frames_dropped == drop_first


def test_hold_policy_keeps_block_length_and_alignment(vae):
    g = torch.Generator().manual_seed(11)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(2)]
    drop, hold = _codec(vae, dropped_frames="drop").stream(), _codec(vae, dropped_frames="hold").stream()
    drop.start(motion)
    hold.start(motion)
    d0, h0 = drop.decode_block(blocks[0]), hold.decode_block(blocks[0])
    assert h0.shape[1] == 12 and d0.shape[1] == 9
    # frame k of the session shows generated frame k: the 3 dropped frames are held copies of frame 3
    torch.testing.assert_close(h0[:, 3:], d0)
    for k in range(3):
        torch.testing.assert_close(h0[:, k], d0[:, 0])
    # later blocks are untouched by the policy
    torch.testing.assert_close(hold.decode_block(blocks[1]), drop.decode_block(blocks[1]))
    assert hold.frames_emitted == 24 and drop.frames_emitted == 21


def test_restart_resets_the_caches(vae):
    codec = _codec(vae)
    g = torch.Generator().manual_seed(5)
    motion, block = torch.randn(16, 19, 4, 6, generator=g), torch.randn(16, 3, 4, 6, generator=g)
    s = codec.stream()
    s.start(motion)
    first = s.decode_block(block)
    s.decode_block(torch.randn(16, 3, 4, 6, generator=g))
    s.start(motion)
    torch.testing.assert_close(s.decode_block(block), first)


def test_portrait_latents_reference_is_latent_one_of_five_copies(vae):
    codec = _codec(vae)
    image = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    latents = codec.encode_portrait(image)
    assert latents.motion.shape == (16, 19, 4, 6)  # 73 copies -> 19 latents
    five = codec.encode(image[:, None].expand(3, 5, 32, 48))
    torch.testing.assert_close(latents.reference[:, 0], five[:, 1], atol=1e-6, rtol=1e-6)
    single = _codec(vae, reference_latent="single_frame").encode_portrait(image).reference
    assert single.shape == (16, 1, 4, 6) and (single - latents.reference).abs().max() > 1e-4


def test_normalisation_round_trip_and_bad_shapes(vae):
    codec = _codec(vae)
    z = torch.randn(16, 2, 4, 6)
    torch.testing.assert_close(codec.normalize(codec.denormalize(z)), z, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="latents"):
        codec.stream().decode_latents(torch.randn(8, 1, 4, 6))
    with pytest.raises(ValueError, match="motion latents"):
        codec.stream().start(torch.randn(16, 3, 4, 6))
    with pytest.raises(ValueError, match="image"):
        codec.encode_portrait(torch.randn(4, 32, 48))


def test_uint8_conversion():
    px = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 4, 1, 1).expand(3, 4, 1, 1)
    out = to_uint8_frames(px)
    assert out.shape == (4, 1, 1, 3) and out.dtype == torch.uint8
    assert out[:, 0, 0, 0].tolist() == [0, 128, 255, 255]


def test_compiled_decoder_traces_the_cache_and_matches():
    """torch.compile (graph capture only: backend "eager") of the per-latent decoder keeps the cache semantics."""
    import torch._dynamo

    g = torch.Generator().manual_seed(21)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(3)]
    eager = WanVaeCodec(tiny_vae(seed=4))
    compiled = WanVaeCodec(tiny_vae(seed=4))
    torch._dynamo.reset()
    compiled.compile_decoder(backend="eager")
    a, b = eager.stream(), compiled.stream()
    a.start(motion)
    b.start(motion)
    for block in blocks:
        torch.testing.assert_close(b.decode_block(block), a.decode_block(block), atol=0, rtol=0)


def test_compiled_decoder_does_not_recompile_for_cache_strides():
    """The compiled decoder's guards check every cache tensor's strides: entries with the same data but
    other strides (a size-1 dimension's stride, a non-contiguous layout, as another session's history or
    a GPU convolution's output layout may leave them) are normalised first, so nothing recompiles."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    g = torch.Generator().manual_seed(5)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(3)]
    eager, compiled = WanVaeCodec(tiny_vae(seed=4)), WanVaeCodec(tiny_vae(seed=4))
    torch._dynamo.reset()
    compiled.compile_decoder(backend="eager")
    a, b = eager.stream(), compiled.stream()
    a.start(motion)
    b.start(motion)
    b.decode_block(blocks[0]), a.decode_block(blocks[0])
    graphs = counters["stats"]["unique_graphs"]
    tensors = [i for i, e in enumerate(b._cache) if isinstance(e, torch.Tensor)]
    first, second = b._cache[tensors[0]], b._cache[tensors[1]]
    stride = list(first.stride())
    stride[0] += 7  # dimension 0 has size 1: any stride addresses the same data
    b._cache[tensors[0]] = first.as_strided(first.shape, stride)
    b._cache[tensors[1]] = second.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, not contiguous
    for block in blocks[1:]:
        torch.testing.assert_close(b.decode_block(block), a.decode_block(block), atol=0, rtol=0)
    assert counters["stats"]["unique_graphs"] == graphs


def test_fixed_buffer_decoder_path_of_cuda_graphs_gives_the_same_frames(vae, monkeypatch):
    """From the steady state on (every cache entry kept its shape) the decoder runs through DecoderGraph's
    fixed buffers, a CUDA graph on a GPU and the same path eagerly here: the same pixels as the plain calls,
    across blocks and a restart."""
    from live_avatar.core.engines.liveavatar.vae_stream import DecoderGraph

    calls = []
    monkeypatch.setattr(DecoderGraph, "_call", _counting(DecoderGraph._call, calls))
    g = torch.Generator().manual_seed(11)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(4)]
    plain, static = _codec(vae), _codec(vae)
    static.decoder_graphs = "static"
    a, b = plain.stream(), static.stream()
    for restart in range(2):
        a.start(motion)
        b.start(motion)  # the priming latents reach the steady state: the next latent uses the buffers
        for block in blocks[restart:]:
            torch.testing.assert_close(b.decode_block(block), a.decode_block(block), atol=0, rtol=0)
        assert b._graph is not None and b._cache == []
    # per start: the priming latents from the 4th on (the first three change the cache shapes), then every
    # block latent
    assert len(calls) == 2 * (7 - 3) + 3 * (len(blocks) + len(blocks) - 1)


def test_a_cache_that_changes_shape_is_not_steady():
    t2, t1 = torch.zeros(1, 4, 2, 3, 3), torch.zeros(1, 4, 1, 3, 3)
    from live_avatar.core.engines.liveavatar.vae_stream import DecoderGraph

    assert DecoderGraph.steady([t2, t2], [t2.clone(), t2.clone()])
    assert not DecoderGraph.steady([t1, t2], [t2, t2])
    assert not DecoderGraph.steady([None, t2], [t2, t2])
    assert DecoderGraph.steady([None, t2], [None, t2])  # a convolution that keeps no cache
    assert not DecoderGraph.steady(["Rep", t2], [t2, t2])


def _counting(fn, calls):
    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return counted


def test_channels_last_decoder_gives_the_same_frames_and_keeps_its_layout():
    """use_channels_last (engine option vae_channels_last, on by default on CUDA): the decoder's 3D conv
    weights, each latent frame and the causal caches channels-last; float32 on a CPU gives the same pixels."""
    g = torch.Generator().manual_seed(31)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(3)]
    plain, last = WanVaeCodec(tiny_vae(seed=4)), WanVaeCodec(tiny_vae(seed=4))
    last.use_channels_last()
    weights = [p for p in last.vae.decoder.parameters() if p.ndim == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    assert all(p.is_contiguous() for p in last.vae.encoder.parameters())  # the encoder is left as it was
    a, b = plain.stream(), last.stream()
    a.start(motion)
    b.start(motion)
    for block in blocks:
        torch.testing.assert_close(b.decode_block(block), a.decode_block(block), atol=1e-5, rtol=1e-5)
    # the first convolution's cache is the latent frames given: channels-last (a CPU's convolutions return
    # the default layout, a GPU's keep channels-last: the layout goes through on a GPU only)
    first = next(e for e in b._cache if isinstance(e, torch.Tensor))
    assert first.shape[1] == 16 and first.is_contiguous(memory_format=torch.channels_last_3d) and not first.is_contiguous()


def test_compiled_channels_last_decoder_does_not_recompile_for_cache_strides():
    """The compiled decoder in the channels-last layout: cache entries are normalised to that layout's
    standard strides (a contiguous entry is converted, not traced anew), so nothing recompiles."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    g = torch.Generator().manual_seed(6)
    motion = torch.randn(16, 19, 4, 6, generator=g)
    blocks = [torch.randn(16, 3, 4, 6, generator=g) for _ in range(3)]
    eager, compiled = WanVaeCodec(tiny_vae(seed=4)), WanVaeCodec(tiny_vae(seed=4))
    compiled.use_channels_last()
    torch._dynamo.reset()
    compiled.compile_decoder(backend="eager")
    a, b = eager.stream(), compiled.stream()
    a.start(motion)
    b.start(motion)
    torch.testing.assert_close(b.decode_block(blocks[0]), a.decode_block(blocks[0]), atol=1e-5, rtol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    tensors = [i for i, e in enumerate(b._cache) if isinstance(e, torch.Tensor) and e.ndim == 5]
    b._cache[tensors[0]] = b._cache[tensors[0]].contiguous()  # same values, the default layout
    for block in blocks[1:]:
        torch.testing.assert_close(b.decode_block(block), a.decode_block(block), atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs


def test_standard_layout_of_a_channels_last_entry():
    from live_avatar.core.engines.liveavatar.vae_stream import _standard_layout

    x = torch.randn(1, 4, 3, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    tail = x[:, :, -2:]  # a slice: dense, in the layout, but strides of its own
    y = _standard_layout(tail, torch.channels_last_3d)
    assert torch.equal(y, tail) and y.data_ptr() == tail.data_ptr()  # a view, no copy
    assert y.stride() == torch.empty(1, 4, 2, 5, 6).contiguous(memory_format=torch.channels_last_3d).stride()
    z = _standard_layout(tail.contiguous(), torch.channels_last_3d)  # the other layout: copied into this one
    assert torch.equal(z, tail) and z.is_contiguous(memory_format=torch.channels_last_3d)
    flat = torch.randn(4, 6)
    assert _standard_layout(flat, torch.channels_last_3d) is flat  # not 5-D: the plain layout


@pytest.mark.parametrize("shape", [(1, 4, 2, 5, 6), (1, 1, 1, 1, 1), (2, 3, 1, 4, 1), (1, 8, 1, 1, 5), (3, 4)])
def test_fresh_strides_are_torchs(shape):
    from live_avatar.core.engines.liveavatar.vae_stream import _strides

    assert _strides(shape, False) == torch.empty(shape).stride()
    if len(shape) == 5:
        assert _strides(shape, True) == torch.empty(shape).contiguous(memory_format=torch.channels_last_3d).stride()
