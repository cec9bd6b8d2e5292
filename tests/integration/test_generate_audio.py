"""Audio preparation of ``avatar generate``: streaming decode, silence trim, R128 loudness."""

from __future__ import annotations

import numpy as np
import pytest

from live_avatar.core.offline.audio_prep import (
    FEATURE_RATE,
    AudioInputError,
    find_sound_bounds,
    measure_loudness,
    prepare_audio,
)
from tests.support.speech import write_wav


def _raw(tmp_path, samples):
    path = tmp_path / "x.f32"
    samples.astype(np.float32).tofile(path)
    return path


def test_streaming_loudness_matches_pyloudnorm_across_chunks(tmp_path, speech_16k):
    import pyloudnorm

    # 25 s: crosses the 10 s read chunks, with pauses that the relative gate must drop.
    signal = np.concatenate([speech_16k, np.zeros(24000, np.float32)] * 4)[: 25 * FEATURE_RATE]
    expected = pyloudnorm.Meter(FEATURE_RATE).integrated_loudness(signal.astype(np.float64))
    assert measure_loudness(_raw(tmp_path, signal), 0, signal.size) == pytest.approx(expected, abs=0.05)
    # A sub-range is measured on its own.
    part = signal[FEATURE_RATE : 12 * FEATURE_RATE]
    expected_part = pyloudnorm.Meter(FEATURE_RATE).integrated_loudness(part.astype(np.float64))
    assert measure_loudness(_raw(tmp_path, signal), FEATURE_RATE, 12 * FEATURE_RATE) == pytest.approx(expected_part, abs=0.05)


def test_silence_has_no_loudness(tmp_path):
    assert measure_loudness(_raw(tmp_path, np.zeros(FEATURE_RATE)), 0, FEATURE_RATE) == float("-inf")


def test_sound_bounds(tmp_path, speech_16k):
    signal = np.concatenate([np.zeros(32000, np.float32), speech_16k, np.zeros(48000, np.float32)])
    first, last = find_sound_bounds(_raw(tmp_path, signal), signal.size)
    loud = np.flatnonzero(np.abs(speech_16k) > 0.01)
    # Within the 0.1 s margin (+ one 20 ms frame) of the true first/last sound.
    assert abs(first - (32000 + loud[0])) <= 0.12 * FEATURE_RATE
    assert abs(last - (32000 + loud[-1])) <= 0.12 * FEATURE_RATE
    assert find_sound_bounds(_raw(tmp_path, np.zeros(8000)), 8000) == (0, 0)


def test_prepare_normalises_trims_and_reads_with_zero_padding(tmp_path, speech_16k):
    quiet = 0.1 * np.concatenate([np.zeros(16000, np.float32), speech_16k, np.zeros(16000, np.float32)])
    wav = write_wav(tmp_path / "quiet.wav", quiet, 16000)
    prepared = prepare_audio(wav, tmp_path / "work", trim_silence=True, target_lufs=-16.0)
    assert prepared.gain_db > 15  # 0.1x is 20 dB down
    assert 0.8 < prepared.trim_start_s < 1.0 and prepared.seconds < quiet.size / 16000 - 1.5
    samples = prepared.read(0, prepared.num_samples)
    raw = _raw(tmp_path, samples)
    assert measure_loudness(raw, 0, samples.size) == pytest.approx(-16.0, abs=0.3)
    window = prepared.read(-100, 100)
    assert window.shape == (200,) and not window[:100].any()
    assert not prepared.read(prepared.num_samples, prepared.num_samples + 50).any()


def test_silent_file_cannot_be_trimmed_or_normalised(tmp_path):
    wav = write_wav(tmp_path / "silent.wav", np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioInputError, match="silent"):
        prepare_audio(wav, tmp_path / "a", trim_silence=True)
    with pytest.raises(AudioInputError, match="silent"):
        prepare_audio(wav, tmp_path / "b", target_lufs=-16.0)


def test_undecodable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioInputError, match="cannot decode"):
        prepare_audio(junk, tmp_path / "w")
    with pytest.raises(AudioInputError, match="no such file"):
        prepare_audio(tmp_path / "nope.mp3", tmp_path / "w")


def test_stereo_decodes_like_the_live_path_at_the_level_of_its_channels(tmp_path, speech_16k):
    """A stereo file with the same signal in both channels reads as that signal (channels averaged,
    as AudioIngest does live), not 3 dB louder as a swresample downmix would make it."""
    import wave

    mono = 0.5 * speech_16k
    pcm = (np.repeat(mono, 2) * 32767.0).astype("<i2")
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(FEATURE_RATE)
        w.writeframes(pcm.tobytes())
    prepared = prepare_audio(path, tmp_path / "work")
    samples = prepared.read(0, prepared.num_samples)
    assert samples.size == mono.size
    np.testing.assert_allclose(samples, mono, atol=1e-4)
