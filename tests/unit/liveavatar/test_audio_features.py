"""Wav2Vec2 features at 25 fps: offline (reference) path, live rolling windows, causality (spec §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from live_avatar.core.engines.liveavatar.audio_features import (
    AudioFeatureConfig,
    Wav2VecFeatures,
)
from live_avatar.core.engines.liveavatar.audio_window import (
    WAV2VEC2_HOP_SAMPLES,
    WAV2VEC2_RECEPTIVE_FIELD_SAMPLES,
)
from live_avatar.core.engines.liveavatar.tiny_weights import write_tiny_wav2vec

torch.set_num_threads(1)
SPF = 640  # samples per video frame at 16 kHz / 25 fps


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    folder = write_tiny_wav2vec(tmp_path_factory.mktemp("wav2vec"), seed=1)
    return Wav2VecFeatures.from_folder(folder, config=AudioFeatureConfig(context_s=1.0, lookahead_s=0.1))


def _audio(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(n)).astype(
        np.float32
    )


def test_geometry(features):
    assert features.num_layers == 25 and features.hop == 320 and features.receptive_field == 400
    assert features.context_samples == 16000 and features.context_samples % 320 == 0
    assert features.lookahead_samples == 1600
    assert features.num_feature_frames(16000) == 49  # (16000 - 400) // 320 + 1
    # the preflight (no torch) counts the lookahead with these constants: they must be the encoder's
    assert (features.hop, features.receptive_field) == (WAV2VEC2_HOP_SAMPLES, WAV2VEC2_RECEPTIVE_FIELD_SAMPLES)


def test_offline_matches_reference_definition(features):
    """Whole-file path: align_corners 50 Hz -> 30 fps, frame i <- round(1.2 i), zeros past the audio."""
    samples = _audio(40000)  # 2.5 s -> T50 = 124, T30 = 74 -> floor(74 / 57.6) + 1 = 2 clips of 48 frames
    out = features.offline(samples)
    assert out.shape == (25, 32, 96)
    x = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
    states = features.hidden_states(x).float()  # [25, 124, 32]
    assert states.shape[1] == 124
    t30 = int(124 * 0.6)
    for i in (0, 7, 30, 47, 61, 62, 95):
        k = round(1.2 * i)
        if k >= t30:
            assert torch.count_nonzero(out[:, :, i]) == 0
            continue
        pos = k * (124 - 1) / (t30 - 1)
        lo = int(np.floor(pos))
        w = pos - lo
        hi = min(lo + 1, 123)
        expected = states[:, lo] * (1 - w) + states[:, hi] * w
        torch.testing.assert_close(out[:, :, i], expected, atol=1e-5, rtol=1e-5)
    # frame 61 reads k = 73 < T30; from frame 62 on, k = round(1.2 * 62) = 74 >= T30: zeros
    assert torch.count_nonzero(out[:, :, 61]) > 0
    assert out[:, :, 62:].abs().sum() == 0


def test_block_equals_offline_when_the_window_is_the_whole_file(features):
    """Same definition, same audio: a block whose window spans the file equals the offline (nominal) features."""
    ctx, la = features.context_samples, features.lookahead_samples
    first, n = ctx // SPF, 12
    samples = _audio(ctx + n * SPF + la, seed=3)
    block = features.block(samples, first, n, ctx, la)
    assert block.shape == (25, 32, n)
    offline = features.offline(samples, num_frames=first + n, interpolation="nominal")
    torch.testing.assert_close(block, offline[:, :, first:], atol=1e-4, rtol=1e-4)
    # the nominal and the align_corners resampling differ (documented deviation), so this is a real check
    aligned = features.offline(samples, num_frames=first + n)
    assert (aligned[:, :, first:] - block).abs().max() > 1e-3


def test_block_is_causal_up_to_its_lookahead(features):
    """A block's features depend on nothing after its end + lookahead."""
    ctx, la = features.context_samples, features.lookahead_samples
    total = _audio(16000 * 5, seed=4)
    first, n = 40, 12
    start, stop = first * SPF - ctx, (first + n) * SPF + la
    base = features.block(total[start:stop], first, n, ctx, la)
    changed = total.copy()
    changed[stop:] = _audio(len(total) - stop, seed=9) * 3
    again = features.block(changed[start:stop], first, n, ctx, la)
    torch.testing.assert_close(base, again, atol=0, rtol=0)
    # ... while audio inside the block does change them
    louder = total.copy()
    louder[first * SPF : (first + n) * SPF] = _audio(n * SPF, seed=11)
    assert (features.block(louder[start:stop], first, n, ctx, la) - base).abs().max() > 1e-3


def test_block_features_follow_global_time(features):
    """Consecutive blocks over one signal agree with one window that covers both (same global positions)."""
    ctx, la = features.context_samples, features.lookahead_samples
    sig = _audio(16000 * 4, seed=5)
    first = 30
    # one window with frames [30, 54) vs the same window read for frames [42, 54) with a larger context
    two = features.block(sig[first * SPF - ctx : (first + 24) * SPF + la], first, 24, ctx, la)
    second = features.block(sig[first * SPF - ctx : (first + 24) * SPF + la], first + 12, 12, ctx + 12 * SPF, la)
    torch.testing.assert_close(two[:, :, 12:], second, atol=1e-5, rtol=1e-5)


def test_silence_is_not_amplified(features):
    ctx, la = features.context_samples, features.lookahead_samples
    n = ctx + 12 * SPF + la
    quiet = (1e-4 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    normalised = features._normalize(quiet, features.config.norm_min_std)
    assert np.abs(normalised).max() < 0.1  # the std floor keeps near-silence near zero


def test_bad_windows_are_rejected(features):
    ctx, la = features.context_samples, features.lookahead_samples
    with pytest.raises(ValueError, match="expected"):
        features.block(np.zeros(100, np.float32), 30, 12, ctx, la)
    with pytest.raises(ValueError, match="grid"):
        features.block(np.zeros(ctx + 100 + 12 * SPF + la, np.float32), 30, 12, ctx + 100, la)
    with pytest.raises(ValueError, match="lookahead"):
        features.block(np.zeros(ctx + 12 * SPF, np.float32), 30, 12, ctx, 0)
    with pytest.raises(FileNotFoundError):
        Wav2VecFeatures.from_folder("/nonexistent/wav2vec")


def test_cuda_graphs_are_refused_on_the_cpu_and_the_windows_stay_eager(tmp_path):
    folder = write_tiny_wav2vec(tmp_path / "wav2vec", seed=1)
    feats = Wav2VecFeatures.from_folder(folder, config=AudioFeatureConfig(context_s=1.0, lookahead_s=0.1))
    window = _audio(feats.context_samples + 12 * SPF + feats.lookahead_samples)
    before = feats.block(window, 25, 12, feats.context_samples, feats.lookahead_samples)
    assert feats.use_cuda_graphs() is False
    torch.testing.assert_close(feats.block(window, 25, 12, feats.context_samples, feats.lookahead_samples), before,
                               rtol=0, atol=0)
