"""Size rule and duration plan of ``avatar generate`` (the reference tool's rules, spec §7)."""

from __future__ import annotations

import math

import pytest

from live_avatar.core.offline.plan import (
    ENGINE_LIMITS,
    EngineLimits,
    PlanError,
    choose_size,
    clips_for_audio,
    make_plan,
    parse_size,
    wav2vec_frames,
)
from live_avatar.core.presets import Preset, PresetError, load_preset, preset_names

LANDSCAPE_16_9 = (1920, 1080)  # (width, height)


@pytest.mark.parametrize(
    "image, size, expected",
    [
        # The reference's documented examples (spec §7): 16:9 photo, both orientations.
        (LANDSCAPE_16_9, "704*384", (704, 384)),
        ((1080, 1920), "704*384", (384, 704)),
        (LANDSCAPE_16_9, "720*400", (704, 384)),
        (LANDSCAPE_16_9, "688*368", (640, 384)),
        (LANDSCAPE_16_9, "384*256", (384, 256)),
        ((1024, 1024), "704*384", (512, 512)),
        # 3:2: 576x384 under 704*384, 640x448 under 720*400 (spec: A=270336 vs 288000).
        ((900, 600), "704*384", (576, 384)),
        ((900, 600), "720*400", (640, 448)),
        # A photo smaller than the cap is not enlarged, only rounded up to the grid.
        ((300, 200), "704*384", (320, 256)),
    ],
)
def test_size_rule_reference_examples(image, size, expected):
    w, h = parse_size(size)
    assert choose_size(*image, w * h, 64) == expected


@pytest.mark.parametrize("image", [(1920, 1080), (1080, 1920), (1000, 1000), (640, 480), (333, 777), (4000, 1000)])
@pytest.mark.parametrize("size", ["704*384", "720*400", "688*368", "384*256", "1280*720", "512*512"])
@pytest.mark.parametrize("divisor", [64, 16])
def test_size_rule_properties(image, size, divisor):
    """Area cap respected, sides on the grid, aspect ratio kept within one grid step."""
    w, h = parse_size(size)
    out_w, out_h = choose_size(*image, w * h, divisor)
    assert out_w * out_h <= w * h
    assert out_w % divisor == 0 and out_h % divisor == 0 and out_w > 0 and out_h > 0
    # Both sides come from one common scale s, each rounded up to the grid:
    # out - divisor < side * s <= out (+1 for int truncation), so the two s-intervals overlap.
    lower = max((out_w - divisor) / image[0], (out_h - divisor) / image[1])
    upper = min((out_w + 1) / image[0], (out_h + 1) / image[1])
    assert lower < upper


def test_finer_grid_keeps_the_aspect_ratio_better():
    w, h = parse_size("688*368")
    coarse = choose_size(1920, 1080, w * h, 64)
    fine = choose_size(1920, 1080, w * h, 16)
    assert abs(fine[0] / fine[1] - 16 / 9) <= abs(coarse[0] / coarse[1] - 16 / 9)


@pytest.mark.parametrize("text", ["", "704", "704*", "a*b", "704*384*2", "0*384", "-704*384", "704 by 384"])
def test_unparsable_size_is_refused_with_an_example(text):
    with pytest.raises(PlanError, match="704\\*384"):
        parse_size(text)


def test_size_separators():
    assert parse_size("704*384") == parse_size("704x384") == parse_size(" 704 * 384 ") == (704, 384)


def test_area_below_one_grid_cell_is_refused():
    with pytest.raises(PlanError, match="64\\*64"):
        choose_size(1920, 1080, 60 * 60, 64)


def test_wav2vec_frame_count():
    # 10 s at 16 kHz -> 499 frames at 50 Hz (spec §7), 1 s -> 49.
    assert wav2vec_frames(160_000) == 499
    assert wav2vec_frames(16_000) == 49
    assert wav2vec_frames(100) == 0


@pytest.mark.parametrize(
    "seconds, infer_frames, clips",
    [
        (10.0, 48, 6),  # spec §7: 10 s -> 6 clips (285 frames in the reference, which drops 3)
        (60.0, 48, 32),  # spec §7: 60 s -> 32 clips
        (1.0, 48, 1),
        (1.92, 48, 1),  # T30 = 57 < 57.6: still one clip
        (2.5, 48, 2),
        (10.0, 24, 11),
    ],
)
def test_clip_count_from_audio(seconds, infer_frames, clips):
    assert clips_for_audio(int(seconds * 16000), infer_frames) == clips


def test_clips_always_cover_the_audio():
    for seconds in [0.5, 1.0, 3.3, 7.7, 19.2, 100.0, 1921.0]:
        n = int(seconds * 16000)
        clips = clips_for_audio(n, 48)
        assert clips * 48 / 25 >= seconds - 0.1  # at most the last 50 Hz frame's rounding
        assert (clips - 1) * 48 / 25 < seconds


def _plan(seconds=10.0, num_clip=None, infer_frames=48, engine="liveavatar", image=LANDSCAPE_16_9, size="704*384"):
    w, h = parse_size(size)
    return make_plan(
        image_size=image,
        max_area=w * h,
        audio_samples=int(seconds * 16000),
        infer_frames=infer_frames,
        num_clip=num_clip,
        limits=ENGINE_LIMITS[engine],
    )


def test_plan_uncapped_pads_the_video():
    plan = _plan(10.0)
    assert (plan.clips, plan.frames) == (6, 288)
    assert plan.video_seconds == pytest.approx(11.52)
    assert plan.padded_seconds == pytest.approx(1.52)
    assert plan.unused_audio_seconds == 0
    assert plan.blocks == 288 // 12 and plan.blocks_per_clip == 4
    text = plan.describe()
    assert "6 clip(s)" in text and "288 frames" in text and "11.52 s" in text and "padded by 1.52 s" in text
    assert "704*384" in text


def test_kept_frames_memory_grows_with_the_plan():
    short, long_ = _plan(10.0), _plan(600.0)
    assert short.kept_frames_bytes == 288 * 704 * 384 * 3
    assert long_.kept_frames_bytes > 2 << 30  # 10 min at 704x384: worth a warning without online decode


def test_plan_capped_by_num_clip_reports_unused_audio():
    plan = _plan(60.0, num_clip=10)
    assert plan.clips == 10 and plan.clips_for_audio == 32
    assert plan.unused_audio_seconds == pytest.approx(60.0 - 19.2)
    assert "unused" in plan.describe() and "--num_clip to 32" in plan.describe()


def test_num_clip_larger_than_needed_does_not_add_silence():
    assert _plan(10.0, num_clip=1000).clips == 6


@pytest.mark.parametrize("num_clip", [0, -3])
def test_num_clip_must_be_positive(num_clip):
    with pytest.raises(PlanError, match="at least 1"):
        _plan(num_clip=num_clip)


@pytest.mark.parametrize("engine, bad, block", [("liveavatar", 50, 12), ("liveavatar", 0, 12), ("lite", 47, 2)])
def test_infer_frames_must_fit_the_engine_block(engine, bad, block):
    with pytest.raises(PlanError, match=f"multiple of {block}"):
        _plan(infer_frames=bad, engine=engine)


def test_lite_uses_a_finer_size_grid():
    plan = _plan(engine="lite", size="688*368")
    assert plan.width % 16 == 0 and plan.height % 16 == 0
    assert plan.width * plan.height <= 688 * 368
    assert abs(plan.width / plan.height - 16 / 9) < abs(640 / 384 - 16 / 9)  # closer than the 64-grid answer


def test_empty_audio_is_refused():
    with pytest.raises(PlanError, match="empty"):
        _plan(seconds=0.0)


def test_custom_limits():
    limits = EngineLimits(size_divisor=32, block_frames=4)
    plan = make_plan(image_size=(800, 600), max_area=512 * 384, audio_samples=48000, infer_frames=8, num_clip=None, limits=limits)
    assert plan.width % 32 == 0 and plan.frames % 8 == 0
    assert math.isclose(plan.width / plan.height, 800 / 600, rel_tol=0.15)


# -- presets --------------------------------------------------------------------------------


def test_shipped_presets_load_and_differ_as_documented():
    assert {"preview", "standard", "long", "hq"} <= set(preset_names())
    preview, standard, long_, hq = (load_preset(n) for n in ("preview", "standard", "long", "hq"))
    area = lambda p: math.prod(parse_size(p.size))  # noqa: E731
    assert area(preview) < area(standard) < area(hq)
    assert preview.num_clip is not None and preview.sample_steps < standard.sample_steps
    assert all(p.enable_online_decode for p in (preview, standard, long_, hq))  # memory flat by default
    assert standard.num_clip is None and long_.num_clip is None


def test_explicit_flags_override_a_preset():
    preset = load_preset("preview")
    merged = preset.merged({"size": "512*512", "num_clip": None, "enable_online_decode": False, "unrelated": 1})
    assert merged.size == "512*512"
    assert merged.num_clip == preset.num_clip  # None = flag not given: the preset's value stays
    assert merged.enable_online_decode is False


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(PresetError, match="preview"):
        load_preset("cinema")


def test_preset_with_unknown_key_is_refused(tmp_path):
    (tmp_path / "odd.yaml").write_text("size: '512*512'\nframes_per_second: 30\n")
    with pytest.raises(PresetError, match="frames_per_second"):
        load_preset("odd", tmp_path)
    assert Preset(name="x").merged({}).size == "704*384"


def test_preset_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "odd.yaml").write_text("- size\n- num_clip\n")
    with pytest.raises(PresetError, match="mapping"):
        load_preset("odd", tmp_path)
