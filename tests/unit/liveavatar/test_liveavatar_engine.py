"""The liveavatar engine on tiny random weights (CPU): contract, frames, audio dependence, sink refresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from live_avatar.core.contract import AudioBlock, AvatarError, BlockGenerator, Engine, EngineBusyError
from live_avatar.core.engines import load_engine
from live_avatar.core.engines.liveavatar.options import EngineConfigError, frame_size

torch.set_num_threads(1)
SPF = 640


@pytest.fixture(scope="module")
def engine():
    return load_engine("liveavatar", tiny=True, capacity=2, seed=7)


@pytest.fixture(scope="module")
def avatar(engine):
    yy, xx = np.mgrid[0:240, 0:180]
    img = np.stack([(xx * 255 // 180), (yy * 255 // 240), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    return engine.prepare_avatar(img)


def _block(gen, k: int, seed: int, amplitude: float = 0.2) -> AudioBlock:
    n = gen.context_samples + 12 * SPF + gen.lookahead_samples
    t = np.arange(n) / 16000
    rng = np.random.default_rng(seed)
    samples = amplitude * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(n)
    return AudioBlock(
        samples=samples.astype(np.float32), first_frame=12 * k, num_frames=12,
        context=gen.context_samples, lookahead=gen.lookahead_samples, speech=np.ones(12, bool),
    )


def test_contract_and_geometry(engine, avatar):
    assert isinstance(engine, Engine)
    assert engine.name == "liveavatar" and engine.fps == 25 and engine.block_frames == 12
    assert engine.size == (64, 128)  # "128*64" area cap on a 9:16 frame
    assert all(side % 64 == 0 for side in engine.size)
    assert avatar.image.shape == (128, 64, 3)
    assert avatar.motion_latents.shape == (16, 19, 16, 8) and avatar.reference_latent.shape == (16, 1, 16, 8)
    gen = engine.new_generator(avatar, "a person talks")
    try:
        assert isinstance(gen, BlockGenerator)
        assert gen.context_samples % 320 == 0 and gen.lookahead_samples >= 400
    finally:
        gen.close()


def test_frames_shape_determinism_and_audio_dependence(engine, avatar):
    a, b = engine.new_generator(avatar, "a person talks"), engine.new_generator(avatar, "a person talks")
    try:
        fa0, fb0 = a.generate(_block(a, 0, seed=1)), b.generate(_block(b, 0, seed=1))
        assert fa0.shape == (12, 128, 64, 3) and fa0.dtype == np.uint8
        np.testing.assert_array_equal(fa0, fb0)  # same seed, same audio: same frames
        # the first 3 frames (dropped by the reference) hold the first kept frame
        assert all(np.array_equal(fa0[k], fa0[3]) for k in range(3)) and not np.array_equal(fa0[3], fa0[11])
        fa1 = a.generate(_block(a, 1, seed=2))
        fb1 = b.generate(_block(b, 1, seed=5, amplitude=0.6))  # different audio for block 1
        assert fa1.shape == fb1.shape == (12, 128, 64, 3)
        diff = np.abs(fa1.astype(int) - fb1.astype(int))
        assert diff.max() > 0 and diff.mean() > 0.01
    finally:
        a.close()
        b.close()


def _frames_kept(engine, avatar) -> int:
    gen = engine.new_generator(avatar)
    try:
        return gen._recent.maxlen
    finally:
        gen.close()


def _sink_after_each_block(engine, avatar, blocks: int = 6) -> list[torch.Tensor]:
    gen = engine.new_generator(avatar, None)
    try:
        sinks = []
        for k in range(blocks):
            gen.generate(_block(gen, k, seed=k))
            sinks.append(gen.stepper.sink.k.clone())
        assert gen._first_latent is None  # used by the refresh before block 4
        return sinks
    finally:
        gen.close()


def test_sink_refresh_before_clip_one(engine, avatar):
    """Default keep_motion (the reference's streaming pipeline): the sink is rebuilt once, before the
    first block of clip 1, from the first generated latent; the portrait's motion latents stay; no
    frames are kept for it."""
    assert engine.options.sink_refresh == "keep_motion"
    assert _frames_kept(engine, avatar) == 0, "frames kept without a re-encode"
    sinks = _sink_after_each_block(engine, avatar)
    for k in (1, 2, 3):
        torch.testing.assert_close(sinks[k], sinks[0], atol=0, rtol=0)
    assert (sinks[4] - sinks[3]).abs().max() > 1e-4  # first block of clip 1: rebuilt
    torch.testing.assert_close(sinks[5], sinks[4], atol=0, rtol=0)  # no further refresh


def test_sink_refresh_reencode_uses_the_generated_frames(engine, avatar):
    """"reencode" (online-decode semantics) rebuilds the sink from the last 73 frames' VAE encoding:
    another sink than keep_motion's from the same session."""
    other = load_engine("liveavatar", tiny=True, capacity=1, seed=7, sink_refresh="reencode")
    other.parts = engine.parts  # the same seeded tiny models, built once
    avatar_other = other.prepare_avatar(avatar.image)
    assert _frames_kept(other, avatar_other) == 73, "no frames kept for the re-encode"
    reencoded = _sink_after_each_block(other, avatar_other)
    kept = _sink_after_each_block(engine, avatar)
    torch.testing.assert_close(reencoded[3], kept[3], atol=0, rtol=0)  # the same until the refresh
    assert (reencoded[4] - kept[4]).abs().max() > 1e-4


def test_capacity_resume_and_bad_input(engine, avatar):
    a, b = engine.new_generator(avatar), engine.new_generator(avatar)
    with pytest.raises(EngineBusyError):
        engine.new_generator(avatar)
    a.close()
    a.close()  # idempotent: releases once
    c = engine.new_generator(avatar)
    with pytest.raises(NotImplementedError, match="resume"):
        c.state_dict()
    with pytest.raises(ValueError, match="12 frames"):
        c.generate(AudioBlock(np.zeros(100, np.float32), 0, 2, 0, 0, np.zeros(2, bool)))
    b.close()
    c.close()
    assert engine.active_sessions == 0
    with pytest.raises(AvatarError):
        engine.prepare_avatar(np.zeros((100, 100), np.uint8))
    with pytest.raises(AvatarError, match="too small"):
        engine.prepare_avatar(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(AvatarError):
        engine.new_generator("not an avatar")


def test_options_are_validated(tmp_path):
    with pytest.raises(EngineConfigError, match="unknown"):
        load_engine("liveavatar", tiny=True, bogus=1)
    with pytest.raises(EngineConfigError, match="exactly one"):
        load_engine("liveavatar")
    with pytest.raises(EngineConfigError, match="sink_refresh"):
        load_engine("liveavatar", tiny=True, sink_refresh="sometimes")
    with pytest.raises(EngineConfigError, match="lookahead_s must be 0 to 1 s, got -0.04"):
        load_engine("liveavatar", tiny=True, lookahead_s=-0.04)  # was taken silently as 0
    with pytest.raises(EngineConfigError, match="context_s must be >= 0"):
        load_engine("liveavatar", tiny=True, context_s=-1)
    with pytest.raises(EngineConfigError, match="not found"):
        load_engine("liveavatar", weights_dir=str(tmp_path / "missing"))
    with pytest.raises(EngineConfigError, match="config.json"):
        load_engine("liveavatar", weights_dir=str(tmp_path))


def test_compile_vae_follows_compile_on_cuda_unless_given():
    from live_avatar.core.engines.liveavatar.options import vae_compile_wanted

    assert vae_compile_wanted(None, True, "cuda") and not vae_compile_wanted(None, False, "cuda")
    assert not vae_compile_wanted(None, True, "cpu")  # the CPU tests' compiled DiT keeps the eager decoder
    assert not vae_compile_wanted(False, True, "cuda") and vae_compile_wanted(True, False, "cpu")
    cpu = load_engine("liveavatar", tiny=True, compile=True, compile_backend="eager", warmup=False)
    assert cpu.compile_vae is False and not cpu.parts.codec.decoder_compiled
    asked = load_engine("liveavatar", tiny=True, compile_vae=True, compile_backend="eager", warmup=False)
    assert asked.compile_vae is True and asked.parts.codec.decoder_compiled


def test_vae_channels_last_is_on_for_cuda_unless_given_and_keeps_the_frames(engine, avatar):
    """Engine option vae_channels_last (None: on a CUDA device): the streaming decoder channels-last. On a
    CPU it is off unless asked, and asked it gives a session the same frames (float32)."""
    import torch

    from live_avatar.core.engines.liveavatar.options import vae_channels_last_wanted
    from live_avatar.core.engines.liveavatar.vae_stream import WanVaeCodec

    assert engine.parts.codec.memory_format == torch.contiguous_format  # the CPU default
    assert vae_channels_last_wanted(None, "cuda") and not vae_channels_last_wanted(None, "cpu")
    assert vae_channels_last_wanted(True, "cpu") and not vae_channels_last_wanted(False, "cuda")
    calls = []

    class Codec(WanVaeCodec):  # records what configure calls, in order
        def __init__(self):
            pass

        def use_channels_last(self):
            calls.append("channels_last")

        def compile_decoder(self, **kwargs):
            calls.append(("compile", kwargs["backend"]))

    Codec().configure(channels_last=True, compile_decoder=True, backend="eager")
    assert calls == ["channels_last", ("compile", "eager")]  # traced in the layout it runs
    other = load_engine("liveavatar", tiny=True, capacity=1, seed=7, vae_channels_last=True, warmup=False)
    assert other.parts.codec.memory_format == torch.channels_last_3d
    a, b = engine.new_generator(avatar, "a person talks"), other.new_generator(other.prepare_avatar(avatar.image), "a person talks")
    try:
        for k in range(2):
            fa, fb = a.generate(_block(a, k, seed=3 + k)), b.generate(_block(b, k, seed=3 + k))
            assert np.abs(fa.astype(int) - fb.astype(int)).max() <= 1
    finally:
        a.close()
        b.close()



def test_tune_kernels_turns_on_inductors_coordinate_descent_tuning():
    import torch._inductor.config as inductor_config

    # the config's own patch restores the process-wide value (monkeypatch's undo deletes the entry)
    with inductor_config.patch(coordinate_descent_tuning=False):
        load_engine("liveavatar", tiny=True, warmup=False)
        assert inductor_config.coordinate_descent_tuning is False
        load_engine("liveavatar", tiny=True, tune_kernels=True, warmup=False)
        assert inductor_config.coordinate_descent_tuning is True
    assert inductor_config.coordinate_descent_tuning is False  # torch's default, back


def test_frame_size_rule():
    assert frame_size("704*384", "9:16") == (384, 704)
    assert frame_size("688*368", "9:16") == (384, 640)
    assert frame_size("720*400", "9:16") == (384, 704)
    assert frame_size("704*384", "16:9") == (704, 384)
    assert frame_size("512*512", "1:1") == (512, 512)
    with pytest.raises(EngineConfigError):
        frame_size("704*384", "wide")


def test_checkpoint_folder_layout_loads_and_matches_the_tiny_engine(engine, avatar, tmp_path):
    """The tiny engine's own weights written in the official folder layout load through load_parts and
    give the same frames: DiT shards + config.json, a diffusers vae/, the wav2vec folder, umT5 + tokenizer."""
    import json

    from safetensors.torch import save_file

    from live_avatar.core.engines.liveavatar.parts import WAN_DIR_NAME, WAV2VEC_DIR

    wan = tmp_path / WAN_DIR_NAME
    wan.mkdir()
    parts = engine.parts
    (wan / "config.json").write_text(json.dumps(parts.dit.config.to_dict()))
    state = {k: v.detach().contiguous() for k, v in parts.dit.state_dict().items()}
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(wan / name))
    index = {"weight_map": {k: name for name, names in shards.items() for k in names}}
    (wan / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    parts.codec.vae.save_pretrained(str(wan / "vae"))
    parts.audio.model.save_pretrained(str(wan / WAV2VEC_DIR))
    parts.text.model.save_pretrained(str(wan / "text_encoder"))
    parts.text.tokenizer.save_pretrained(str(wan / "tokenizer"))

    with pytest.raises(EngineConfigError, match="LoRA"):
        load_engine("liveavatar", weights_dir=str(tmp_path), device="cpu", size="128*64")
    loaded = load_engine("liveavatar", weights_dir=str(tmp_path), lora_path="none", device="cpu", size="128*64", seed=7)
    assert loaded.size == engine.size
    same = loaded.prepare_avatar(avatar.image)
    torch.testing.assert_close(same.motion_latents, avatar.motion_latents)
    a, b = engine.new_generator(avatar, "a person talks"), loaded.new_generator(same, "a person talks")
    try:
        block_a, block_b = _block(a, 0, seed=3), _block(b, 0, seed=3)
        fa, fb = a.generate(block_a).astype(int), b.generate(block_b).astype(int)
        # same weights, same inputs: equal up to float rounding (a few pixels one level apart)
        assert np.abs(fa - fb).max() <= 1 and np.mean(fa != fb) < 1e-3
    finally:
        a.close()
        b.close()


def test_compact_kv_and_a_cpu_text_encoder_give_the_same_frames_with_less_state(engine, avatar):
    """kv_layout="compact" keeps one sink copy (less per-session state); text_encoder_device="cpu" only moves
    umT5 (here everything is on the CPU: the option's plumbing). Both give the default engine's frames."""
    other = load_engine("liveavatar", tiny=True, capacity=2, seed=7, kv_layout="compact", text_encoder_device="cpu")
    assert other.parts.model_config.streaming.kv_layout == "compact"
    assert next(other.parts.text.model.parameters()).device.type == "cpu"
    frames = {}
    for name, eng in (("default", engine), ("compact", other)):
        gen = eng.new_generator(eng.prepare_avatar(avatar.image), "a person talks")
        try:
            frames[name] = [gen.generate(_block(gen, k, seed=k)) for k in range(5)]  # across the clip boundary
            frames[name + "_state"] = gen.stepper.state_nbytes
        finally:
            gen.close()
    assert all(np.array_equal(a, b) for a, b in zip(frames["default"], frames["compact"], strict=True))
    assert frames["compact_state"] < 0.9 * frames["default_state"]
    with pytest.raises(EngineConfigError, match="text_encoder_device"):
        load_engine("liveavatar", tiny=True, text_encoder_device="gpu")


def test_a_closed_sessions_stepper_serves_the_next_session_with_the_same_frames(engine, avatar):
    """reuse_sessions (the default with CUDA graphs): the next session takes a closed session's stepper, its
    rings, sink and graphs, so its start records and allocates nothing; its frames are a new stepper's.
    A closed session's generator no longer touches that stepper; another frame size drops it."""
    assert engine.reuse_sessions is False  # CPU, no graphs: each session its own stepper
    other = load_engine("liveavatar", tiny=True, capacity=1, seed=7, reuse_sessions=True)
    other.parts = engine.parts  # the same seeded tiny models, built once
    mine = other.prepare_avatar(avatar.image)

    def session_frames(gen) -> list[np.ndarray]:
        return [gen.generate(_block(gen, k, seed=k)) for k in range(5)]  # the ring fills, then the sink refresh

    first = other.new_generator(mine, "a person talks")
    stepper = first.stepper
    expected = session_frames(first)
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.generate(_block(first, 5, seed=5))
    assert first.stepper_reused is False
    second = other.new_generator(mine, "a person talks")
    try:
        assert second.stepper is stepper and second.engine_stats()["stepper_reused"] is True
        for k, (got, want) in enumerate(zip(session_frames(second), expected, strict=True)):
            np.testing.assert_array_equal(got, want, err_msg=f"block {k}")
        fresh = engine.new_generator(avatar, "a person talks")  # a new stepper, same seed and models
        try:
            np.testing.assert_array_equal(fresh.generate(_block(fresh, 0, seed=0)), expected[0])
        finally:
            fresh.close()
    finally:
        second.close()
    assert other._idle_steppers == [stepper]
    other.set_size("128*128")
    third = other.new_generator(other.prepare_avatar(avatar.image))
    try:
        assert third.stepper is not stepper and other._idle_steppers == []  # the other size's memory went first
    finally:
        third.close()


def test_generate_parts_gives_the_blocks_frames_a_latent_frame_at_a_time(engine, avatar):
    """What the live session sends first: the 4 frames of the block's first latent frame, while the VAE
    decodes the rest; the parts are generate()'s frames, the session's first block (3 frames held) too."""
    a, b = engine.new_generator(avatar, "a person talks"), engine.new_generator(avatar, "a person talks")
    try:
        a.start()  # the decoder's priming (as open_session does), so that only the block's decodes count below
        for k in range(2):
            stream = a.generate_parts(_block(a, k, seed=k))
            decoded = a.video.latents_decoded
            first = next(stream)
            # the first part is out before the next latent's decode is queued (not after all three)
            assert a.video.latents_decoded == decoded + 1
            parts = [first, *stream]
            assert a.video.latents_decoded == decoded + 3
            assert [p.shape for p in parts] == [(4, 128, 64, 3)] * 3 and all(p.dtype == np.uint8 for p in parts)
            np.testing.assert_array_equal(np.concatenate(parts), b.generate(_block(b, k, seed=k)), err_msg=f"block {k}")
        assert a.blocks_done == 2 and a.engine_stats()["last_block_ms"]["vae"] > 0
    finally:
        a.close()
        b.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(a.generate_parts(_block(a, 2, seed=2)))
