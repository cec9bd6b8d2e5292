"""Block causality and determinism of the streaming stepper (tiny random model on CPU)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from live_avatar.core.engines.liveavatar.config import LatentGeometry, load_model_config
from live_avatar.core.engines.liveavatar.loader import build_random_model
from live_avatar.core.engines.liveavatar.sampler import ClipNoise
from live_avatar.core.engines.liveavatar.stepper import CausalStepper, StepperInputError

from .conftest import CONFIGS, assert_chained_equal_full

TINY = load_model_config(CONFIGS / "liveavatar-tiny.yaml")
GEOMETRY = LatentGeometry(16, 24)
NUM_BLOCKS = 6  # crosses the clip boundary (4 blocks per clip): ring wrap and sink refresh included


@pytest.fixture(scope="module")
def model():
    return build_random_model(TINY.dit, TINY.streaming, seed=11)


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    cfg, s = TINY.dit, TINY.streaming
    ref = torch.randn(cfg.in_dim, 1, GEOMETRY.latent_height, GEOMETRY.latent_width, generator=gen)
    motion = torch.randn(cfg.in_dim, s.lat_motion_frames, GEOMETRY.latent_height, GEOMETRY.latent_width, generator=gen)
    text = torch.randn(9, cfg.text_dim, generator=gen)
    audio = torch.randn(cfg.num_audio_layers, cfg.audio_dim, NUM_BLOCKS * s.video_frames_per_block, generator=gen)
    return ref, motion, text, audio


def _run(model, audio, *, rope_seed=5, noise_seed=42, inputs_seed=0):
    ref, motion, text, _ = _inputs(inputs_seed)
    s = TINY.streaming
    stepper = CausalStepper(model, s, GEOMETRY, rope_rng=random.Random(rope_seed))
    stepper.prefill(ref, motion, text)
    noise = ClipNoise(noise_seed, stepper.clip_noise_shape, s.latent_frames_per_block)
    v = s.video_frames_per_block
    return [stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b)) for b in range(NUM_BLOCKS)]


@pytest.fixture(scope="module")
def baseline(model):
    return _run(model, _inputs(0)[3])


def test_same_seed_same_output(model, baseline):
    again = _run(model, _inputs(0)[3])
    for b, (x, y) in enumerate(zip(baseline, again, strict=True)):
        assert torch.equal(x, y), f"block {b} differs between identical runs"


def test_rope_seed_changes_output(model, baseline):
    other = _run(model, _inputs(0)[3], rope_seed=6)
    # The rolling reference position only rolls once F + Delta > 30, i.e. in later blocks.
    assert any(not torch.equal(x, y) for x, y in zip(baseline, other, strict=True))


@pytest.mark.parametrize("k", [0, 3, 4])
def test_future_audio_does_not_change_past_blocks(model, baseline, k):
    audio = _inputs(0)[3].clone()
    v = TINY.streaming.video_frames_per_block
    audio[..., (k + 1) * v:] = torch.randn(audio[..., (k + 1) * v:].shape, generator=torch.Generator().manual_seed(9))
    changed = _run(model, audio)
    for b in range(k + 1):
        assert torch.equal(changed[b], baseline[b]), f"block {b} changed when audio of block {k + 1}+ changed"
    assert not torch.allclose(changed[k + 1], baseline[k + 1], atol=1e-4), "audio had no effect on its own block"


def test_past_context_matters(model, baseline):
    """Blocks attend to earlier ones: changing only block 0's audio changes block 1 too."""
    audio = _inputs(0)[3].clone()
    v = TINY.streaming.video_frames_per_block
    audio[..., :v] = 0
    changed = _run(model, audio)
    assert not torch.allclose(changed[1], baseline[1], atol=1e-5)


def test_sink_refresh_policy(model, baseline):
    """"none" keeps the first sink: clip 0 identical, clip 1 different from the refreshing default."""
    s = dataclasses.replace(TINY.streaming, sink_refresh="none")
    ref, motion, text, audio = _inputs(0)
    stepper = CausalStepper(model, s, GEOMETRY, rope_rng=random.Random(5))
    stepper.prefill(ref, motion, text)
    noise = ClipNoise(42, stepper.clip_noise_shape, s.latent_frames_per_block)
    v = s.video_frames_per_block
    out = [stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b)) for b in range(NUM_BLOCKS)]
    blocks_per_clip = s.blocks_per_clip
    assert all(torch.equal(out[b], baseline[b]) for b in range(blocks_per_clip))
    assert not torch.allclose(out[blocks_per_clip], baseline[blocks_per_clip], atol=1e-5)


def test_bad_inputs_raise_clear_errors(model):
    ref, motion, text, audio = _inputs(0)
    stepper = CausalStepper(model, TINY.streaming, GEOMETRY)
    with pytest.raises(StepperInputError, match="prefill must run"):
        stepper.step_block(audio[..., :12], torch.zeros(16, 3, 16, 24))
    with pytest.raises(StepperInputError, match=r"ref_latent must be \[16, T, 16, 24\]"):
        stepper.prefill(ref[:, :, :8], motion, text)
    stepper.prefill(ref, motion, text)
    with pytest.raises(StepperInputError, match="audio block must be"):
        stepper.step_block(audio[..., :11], torch.zeros(16, 3, 16, 24))
    with pytest.raises(StepperInputError, match="noise must have 3 latent frame"):
        stepper.step_block(audio[..., :12], torch.zeros(16, 2, 16, 24))
    with pytest.raises(ValueError, match="text context must be"):
        stepper.set_text(torch.zeros(4, 7))
    assert stepper.block_index == 0  # failed calls do not advance the stream


def test_compiled_block_halves_trace_and_match():
    """compile_blocks() wraps the two dense halves of each block; dynamo must trace them without
    changing the result (the "eager" backend runs the captured graphs op for op)."""
    torch._dynamo.reset()
    reference = build_random_model(TINY.dit, TINY.streaming, seed=11)
    compiled = build_random_model(TINY.dit, TINY.streaming, seed=11)
    compiled.compile_blocks(backend="eager", fullgraph=True)  # no graph breaks allowed
    audio = _inputs(0)[3]
    expected = _run(reference, audio)
    actual = _run(compiled, audio)
    for b, (x, y) in enumerate(zip(expected, actual, strict=True)):
        assert torch.equal(x, y), f"block {b}: compiled output differs"
    torch._dynamo.reset()


@pytest.mark.parametrize("graphed", [False, True])
def test_partial_steppers_chained_like_tpp_equal_full_stepper(model, graphed):
    """One stepper per denoising step (as TPP puts each step on its own GPU), chained block by block,
    reproduces the single stepper exactly; each holds one ring only. ``graphed``: the pipeline ranks'
    steppers take every call through StepGraphs' fixed buffers (CUDA graphs on a GPU)."""
    s = dataclasses.replace(TINY.streaming, ref_rope_offset_mode="fixed", ref_rope_fixed_offset=17)
    ref, motion, text, audio = _inputs(0)
    full = CausalStepper(model, s, GEOMETRY)
    ranks = [CausalStepper(model, s, GEOMETRY, steps=[step]) for step in range(s.num_steps)]
    calls = []
    if graphed:
        for rank in ranks:
            rank.use_graphs(None)
            rank.graphs.run = _counting(rank.graphs.run, calls)
    for stepper in [full, *ranks]:
        stepper.prefill(ref, motion, text)
    assert all(sum(r is not None for r in rank.rings) == 1 for rank in ranks)
    assert ranks[0].state_nbytes < full.state_nbytes
    noise = ClipNoise(3, full.clip_noise_shape, s.latent_frames_per_block)
    x = assert_chained_equal_full(full, ranks, audio, noise, NUM_BLOCKS)
    v = s.video_frames_per_block
    assert len(calls) == (s.num_steps * NUM_BLOCKS if graphed else 0)
    with pytest.raises(StepperInputError, match="not held by this stepper"):
        ranks[0].denoise_step(1, x, ranks[0].encode_audio(audio[..., :v]))
    with pytest.raises(StepperInputError, match="needs every step"):
        ranks[0].step_block(audio[..., :v], noise.block(0))


def test_sink_capacity_larger_than_needed_gives_same_output(model, baseline):
    """The reference allocates a fixed 2800-token sink; spare capacity must not change anything."""
    s = dataclasses.replace(TINY.streaming, sink_capacity_tokens=GEOMETRY.sink_tokens(TINY.streaming) + 7)
    ref, motion, text, audio = _inputs(0)
    stepper = CausalStepper(model, s, GEOMETRY, rope_rng=random.Random(5))
    stepper.prefill(ref, motion, text)
    assert stepper.sink.capacity > stepper.sink.length
    noise = ClipNoise(42, stepper.clip_noise_shape, s.latent_frames_per_block)
    v = s.video_frames_per_block
    for b in range(NUM_BLOCKS):
        out = stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b))
        assert torch.equal(out, baseline[b]), f"block {b}"


def test_compact_kv_layout_gives_same_output_with_less_memory(model, baseline):
    """kv_layout "compact" concatenates [sink ; ring] per layer instead of keeping a sink copy per step."""
    s = dataclasses.replace(TINY.streaming, kv_layout="compact")
    ref, motion, text, audio = _inputs(0)
    stepper = CausalStepper(model, s, GEOMETRY, rope_rng=random.Random(5))
    contiguous = CausalStepper(model, TINY.streaming, GEOMETRY)
    assert stepper.state_nbytes < contiguous.state_nbytes
    stepper.prefill(ref, motion, text)
    noise = ClipNoise(42, stepper.clip_noise_shape, s.latent_frames_per_block)
    v = s.video_frames_per_block
    for b in range(NUM_BLOCKS):
        out = stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b))
        assert torch.equal(out, baseline[b]), f"block {b}"


@pytest.mark.parametrize("kv_layout", ["contiguous", "compact"])
def test_static_buffer_path_of_cuda_graphs_gives_same_output(model, baseline, kv_layout):
    """The calls through StepGraphs' fixed-address inputs (run eagerly here; recorded as CUDA graphs on a
    GPU, one per step and ring length, one of the sink call) equal the ordinary calls, while the ring fills,
    across the ring wrap, the sink refresh and a new prompt."""
    s = dataclasses.replace(TINY.streaming, kv_layout=kv_layout)
    ref, motion, text, audio = _inputs(0)
    stepper = CausalStepper(model, s, GEOMETRY, rope_rng=random.Random(5))
    stepper.use_graphs(None)
    stepper.prefill(ref, motion, text)
    assert stepper.graphs.sink_recorded
    noise = ClipNoise(42, stepper.clip_noise_shape, s.latent_frames_per_block)
    v = s.video_frames_per_block
    calls, sink_calls = [], []
    stepper.graphs.run = _counting(stepper.graphs.run, calls)
    stepper.graphs.run_sink = _counting(stepper.graphs.run_sink, sink_calls)
    for b in range(NUM_BLOCKS):
        out = stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b))
        assert torch.equal(out, baseline[b]), f"block {b}"
    assert len(calls) == NUM_BLOCKS * s.num_steps, "every call goes through the graphs, the ring's first blocks too"
    assert len(sink_calls) == 1, "the sink refresh before clip 1 goes through the sink call's fixed inputs"
    ring_lengths = [call_valid for *_, call_valid in calls]
    block = stepper.block_tokens
    assert ring_lengths[:s.blocks_per_clip * s.num_steps] == [b * block for b in range(1, s.blocks_per_clip + 1)
                                                              for _ in range(s.num_steps)]

    # a new prompt is copied into the text K/V that the graphs read, not swapped for new tensors
    kept = [k.data_ptr() for k, _ in stepper.text_kv]
    other_text = torch.randn(5, TINY.dit.text_dim, generator=torch.Generator().manual_seed(3))
    stepper.set_text(other_text)
    assert [k.data_ptr() for k, _ in stepper.text_kv] == kept
    plain = CausalStepper(model, s, GEOMETRY)
    plain.set_text(other_text)
    for (k, val), (k2, val2) in zip(stepper.text_kv, plain.text_kv, strict=True):
        assert torch.equal(k, k2) and torch.equal(val, val2)


def test_fused_ring_rotation_of_graphed_calls_matches_the_ordinary_path(monkeypatch):
    """On CUDA (compiled) the graphed calls rotate and store q/k/v and the sink K in one kernel
    (rope.rotate_into_ring, real arithmetic); here the same function runs uncompiled in bf16 against the
    complex-multiply path: the blocks agree to bf16 rounding, and every call used it."""
    import live_avatar.core.engines.liveavatar.stepper as stepper_module
    from live_avatar.core.engines.liveavatar import rope

    model = build_random_model(TINY.dit, TINY.streaming, seed=11, dtype=torch.bfloat16)
    ref, motion, text, audio = _inputs(0)
    v = TINY.streaming.video_frames_per_block
    outputs, used = [], []
    for fused in (False, True):
        if fused:
            monkeypatch.setattr(stepper_module, "fused_ring_rotation",
                                lambda x, rot: used.append(x.shape) or rope.rotate_into_ring)
        stepper = CausalStepper(model, TINY.streaming, GEOMETRY, rope_rng=random.Random(5))
        stepper.use_graphs(None)
        stepper.prefill(ref, motion, text)
        noise = ClipNoise(42, stepper.clip_noise_shape, TINY.streaming.latent_frames_per_block)
        outputs.append([stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b)) for b in range(NUM_BLOCKS)])
    assert len(used) == NUM_BLOCKS * TINY.streaming.num_steps * TINY.dit.num_layers
    for b, (plain, fused) in enumerate(zip(*outputs, strict=True)):
        error = ((fused.float() - plain.float()).norm() / plain.float().norm()).item()
        assert error < 0.02, f"block {b}: relative error {error}"


def test_graphs_recorded_at_the_prefill_leave_the_session_unchanged(model, baseline, monkeypatch):
    """On CUDA the prefill records a graph per step and ring length (StepGraphs.record_ahead) with
    placeholders in the statics, each ring length's first recording in the context after one eager call
    that writes placeholder K/V into the rings. Here a stand-in context and recorder run those eager calls
    on the CPU: the prefill records them all, empties the rings again, and the session's blocks equal the
    plain stepper's."""
    from live_avatar.core.engines.liveavatar.step_graphs import StepGraphs, _Recorded

    recorded = []
    monkeypatch.setattr(StepGraphs, "_capture", lambda self, step, valid: recorded.append((step, valid)) or _Recorded(None, None))
    stepper = _prefilled_with_a_stand_in_graph_context(model)
    ref, motion, text, _ = _inputs(0)
    s, block = TINY.streaming, stepper.block_tokens
    lengths = [b * block for b in range(1, s.blocks_per_clip + 1)]  # the ring fills over a clip's blocks
    assert stepper.graphs.ring_lengths == tuple(lengths) and lengths[-1] == stepper.ring_tokens
    everything = [(step, n) for step in range(s.num_steps) for n in lengths]
    assert recorded == everything
    assert stepper.graphs.context.warmed == {(stepper.graphs.geometry, n) for n in lengths}
    assert stepper.graphs.audio_tokens is not None  # shaped by the placeholder block
    for ring in stepper.rings:
        assert not ring.k[:, ring.sink_capacity:].any() and not ring.v[:, ring.sink_capacity:].any()
    _assert_blocks_equal(stepper, baseline)
    assert recorded == everything, "nothing recorded during the session"
    stepper.prefill(ref, motion, text)  # a new prefill (same stepper): the graphs are kept
    assert recorded == everything


def test_a_failed_recording_at_the_prefill_leaves_the_session_ungraphed_and_correct(model, baseline, monkeypatch, caplog):
    from live_avatar.core.engines.liveavatar.step_graphs import StepGraphs

    def failing(self, step, valid):  # after the eager first call of StepGraphs._record
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(StepGraphs, "_capture", failing)
    stepper = _prefilled_with_a_stand_in_graph_context(model)
    assert stepper.graphs is None and "runs without them" in caplog.text
    _assert_blocks_equal(stepper, baseline)


def test_the_sink_call_is_recorded_once_and_a_failed_capture_leaves_it_ungraphed(model, baseline, monkeypatch, caplog):
    """The prefill records the sink call after its own ungraphed one; a second prefill of the same stepper
    (reuse_sessions) replays it. A capture that fails leaves that size's sink calls ungraphed (no retry by the
    next session), the denoising graphs in place, and the blocks unchanged."""
    from live_avatar.core.engines.liveavatar.step_graphs import (
        GraphContext,
        StepGraphs,
        _Recorded,
    )

    monkeypatch.setattr(StepGraphs, "_capture", lambda self, step, valid: _Recorded(None, None))
    captures = []
    monkeypatch.setattr(StepGraphs, "_capture_sink", lambda self: captures.append(self.geometry))
    stepper = _prefilled_with_a_stand_in_graph_context(model)
    assert captures == [stepper.graphs.geometry] and stepper.graphs.sink_recorded
    replays = []
    stepper.graphs.run_sink = _counting(stepper.graphs.run_sink, replays)
    stepper.prefill(*_inputs(0)[:3])
    assert len(captures) == 1 and len(replays) == 1, "a reused stepper's prefill replays its sink graph"
    stepper.reset()
    _assert_blocks_equal(stepper, baseline)

    def failing(self):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(StepGraphs, "_capture_sink", failing)
    context = GraphContext()
    for _ in range(2):  # the second session of this size does not try again
        stepper = CausalStepper(model, TINY.streaming, GEOMETRY, rope_rng=random.Random(5))
        stepper.use_graphs(None)
        stepper.graphs.context = context
        stepper.prefill(*_inputs(0)[:3])
        assert stepper.graphs is not None and not stepper.graphs.sink_recorded
        assert (stepper.graphs.geometry, "sink") in context.unrecordable
    assert caplog.text.count("the sink call failed to record") == 1
    _assert_blocks_equal(stepper, baseline)


def _prefilled_with_a_stand_in_graph_context(model) -> CausalStepper:
    """A stepper whose StepGraphs has a stand-in (CPU) context that is not warmed yet, prefilled."""
    from live_avatar.core.engines.liveavatar.step_graphs import GraphContext

    ref, motion, text, _ = _inputs(0)
    stepper = CausalStepper(model, TINY.streaming, GEOMETRY, rope_rng=random.Random(5))
    stepper.use_graphs(None)
    stepper.graphs.context = GraphContext()  # no stream: its eager calls run on the CPU
    stepper.prefill(ref, motion, text)
    return stepper


def test_each_frame_size_runs_its_eager_call_before_its_first_capture(model, monkeypatch):
    """An engine's steppers share one graph context. A second frame size needs an eager call of its own
    (one per ring length) before its first capture: that call compiles the size's kernels, and a compile
    inside a capture failed it on an H200 (the engine's first 384x640 session after 320x512 ran ungraphed)."""
    from live_avatar.core.engines.liveavatar.step_graphs import (
        GraphContext,
        StepGraphs,
        _Recorded,
    )

    eager_calls, captures = [], []
    eager = StepGraphs._eager_call
    monkeypatch.setattr(StepGraphs, "_eager_call",
                        lambda self, step, valid: eager_calls.append(self.geometry) or eager(self, step, valid))
    monkeypatch.setattr(StepGraphs, "_capture", lambda self, step, valid: captures.append(self.geometry) or _Recorded(None, None))
    context = GraphContext()
    cfg, s = TINY.dit, TINY.streaming
    geometries = {}
    for geometry in (GEOMETRY, GEOMETRY, LatentGeometry(16, 16)):  # two sessions of one size, then another size
        gen = torch.Generator().manual_seed(1)
        h, w = geometry.latent_height, geometry.latent_width
        stepper = CausalStepper(model, s, geometry, rope_rng=random.Random(5))
        stepper.use_graphs(None)
        stepper.graphs.context = context
        stepper.prefill(torch.randn(cfg.in_dim, 1, h, w, generator=gen),
                        torch.randn(cfg.in_dim, s.lat_motion_frames, h, w, generator=gen), torch.randn(9, cfg.text_dim, generator=gen))
        geometries[geometry] = stepper.graphs.geometry
    first, second = geometries[GEOMETRY], geometries[LatentGeometry(16, 16)]
    assert first != second
    lengths = s.blocks_per_clip  # ring lengths: one more block per block until the ring is full
    assert eager_calls == [first] * lengths + [second] * lengths, "one eager call per frame size and ring length"
    assert captures == [first] * (2 * s.num_steps * lengths) + [second] * s.num_steps * lengths
    assert {geometry for geometry, _ in context.warmed} == {first, second} and len(context.warmed) == 2 * lengths


def _assert_blocks_equal(stepper: CausalStepper, expected: list[torch.Tensor]) -> None:
    audio = _inputs(0)[3]
    noise = ClipNoise(42, stepper.clip_noise_shape, TINY.streaming.latent_frames_per_block)
    v = TINY.streaming.video_frames_per_block
    for b in range(NUM_BLOCKS):
        assert torch.equal(stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b)), expected[b]), f"block {b}"


def test_a_stepper_with_graphs_is_freed_when_dropped(model):
    """No reference cycle through StepGraphs: a closed session's KV rings go at once, not at the next full
    garbage collection (on a GPU they are ~31 GB at 320x512)."""
    import gc
    import weakref

    stepper = CausalStepper(model, TINY.streaming, GEOMETRY)
    stepper.use_graphs(None)
    gone = weakref.ref(stepper)
    gc.disable()
    try:
        del stepper
        assert gone() is None
    finally:
        gc.enable()


def _counting(fn, calls):
    def counted(*args, **kwargs):
        calls.append(args)  # (step, x, audio, slot, noisy_rot, sink_rot, valid ring rows)
        return fn(*args, **kwargs)
    return counted


def test_a_filling_ring_length_that_fails_to_record_runs_eagerly_and_the_rest_stays_graphed(model, baseline, monkeypatch,
                                                                                            caplog):
    """A capture that fails for a call of a filling ring (not the steady state) costs only those calls their
    graphs, in this session and the next ones of its size: they run eagerly, as before they were graphed."""
    from live_avatar.core.engines.liveavatar.step_graphs import StepGraphs, _Recorded

    captures = []

    def capture(self, step, valid):
        captures.append((step, valid))
        if valid < self.stepper.ring_tokens:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return _Recorded(graph=object(), out=None)  # a stand-in graph: it is never replayed here

    monkeypatch.setattr(StepGraphs, "_capture", capture)
    stepper = _prefilled_with_a_stand_in_graph_context(model)
    s, full = TINY.streaming, stepper.ring_tokens
    assert stepper.graphs is not None and "run eagerly" in caplog.text
    assert stepper.graphs.recorded == [(step, full) for step in range(s.num_steps)]
    assert stepper.graphs.recorded_steps == list(range(s.num_steps))
    partial = {n for n in stepper.graphs.ring_lengths if n < full}
    assert len(partial) == s.blocks_per_clip - 1 and all(not stepper.graphs.covers(n) for n in partial)
    assert stepper.graphs.context.unrecordable == {(stepper.graphs.geometry, n) for n in partial}
    tried = len(captures)
    # the next session of this size does not try them again
    ref, motion, text, _ = _inputs(0)
    other = CausalStepper(model, TINY.streaming, GEOMETRY, rope_rng=random.Random(5))
    other.use_graphs(None)
    other.graphs.context = stepper.graphs.context
    other.prefill(ref, motion, text)
    assert captures[tried:] == [(step, full) for step in range(s.num_steps)]
    # the blocks of a filling ring take the ordinary path (the full ring's stand-in graphs are never replayed)
    monkeypatch.setattr(StepGraphs, "run", lambda self, *args: pytest.fail("a filling ring's call went to the graphs"))
    audio = _inputs(0)[3]
    noise = ClipNoise(42, stepper.clip_noise_shape, s.latent_frames_per_block)
    v = s.video_frames_per_block
    for b in range(s.blocks_per_clip - 1):
        assert torch.equal(stepper.step_block(audio[..., b * v:(b + 1) * v], noise.block(b)), baseline[b]), f"block {b}"
