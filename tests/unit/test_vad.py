"""VoiceActivityDetector / detect_speech on real espeak-ng speech, silence and background noise."""

from __future__ import annotations

import numpy as np
import pytest

from live_avatar.core.audio.vad import VadConfig, VoiceActivityDetector, detect_speech
from tests.conftest import espeak_wav
from tests.support.speech import read_wav_16k

SR, S = 16000, 640


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(SR * seconds), np.float32)


def noise(kind: str, seconds: float, rms: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(SR * seconds)
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    elif kind == "pink":  # 1/f power
        spectrum = np.fft.rfft(white)
        f = np.arange(spectrum.shape[0], dtype=np.float64)
        f[0] = 1.0
        x = np.fft.irfft(spectrum / np.sqrt(f), n)
    elif kind == "brown":  # 1/f^2 power (rumble), without its slow drift
        x = np.cumsum(white)
        x -= np.convolve(x, np.ones(1601) / 1601, "same")
    elif kind == "hum":
        x = np.sin(2 * np.pi * 50 * np.arange(n) / SR) + 0.3 * np.sin(2 * np.pi * 150 * np.arange(n) / SR)
    else:
        raise ValueError(kind)
    return (x / np.sqrt(np.mean(x**2)) * rms).astype(np.float32)


def speech_frames(samples: np.ndarray, threshold_db: float = -35.0) -> np.ndarray:
    """Reference: frames with clearly audible signal (where espeak actually speaks)."""
    n = -(-samples.shape[0] // S)  # same frame count as detect_speech (last frame zero-padded)
    e = np.array([np.mean(samples[k * S : (k + 1) * S] ** 2) for k in range(n)])
    return 10 * np.log10(e + 1e-12) > threshold_db


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> np.ndarray:
    samples = read_wav_16k(espeak_wav(tmp_path_factory.mktemp("vad") / "hello.wav", "Hello world"))
    audible = np.nonzero(np.abs(samples) > 1e-3)[0]  # espeak adds ~0.4 s of trailing silence
    return samples[audible[0] : audible[-1] + 1]


def test_speech_with_silence_file(speech_with_silence_wav, speech_16k):
    samples = read_wav_16k(speech_with_silence_wav)
    speech, onsets = detect_speech(samples)
    assert speech.shape == (-(-samples.shape[0] // S),)
    speech_start = 50  # the fixture's speech starts at exactly 2.0 s = frame 50
    speech_end = speech_start + speech_16k.shape[0] // S
    assert not speech[: speech_start - 1].any(), "no speech in the leading silence"
    audible = speech_frames(samples)
    assert speech[audible].mean() > 0.9, "audible speech frames must be detected"
    assert speech[speech_start:speech_end].mean() > 0.85, "short pauses inside speech must not split it"
    assert not speech[speech_end + 12 :].any(), "speech ends after the hangover"
    assert onsets and speech_start - 1 <= onsets[0] <= speech_start + 3
    # The fixture's only pause >= 0.5 s is the leading silence: no extra onsets inside speech.
    assert len(onsets) == 1


def test_onsets_only_after_long_enough_pauses(hello):
    # hello | 0.8 s | hello | 0.2 s | hello  ->  onsets at the first and second, not the third
    parts = [silence(0.4), hello, silence(0.8), hello, silence(0.2), hello, silence(0.6)]
    starts, pos = [], 0
    for p in parts:
        starts.append(pos)
        pos += p.shape[0]
    samples = np.concatenate(parts)
    speech, onsets = detect_speech(samples)
    first, second, third = starts[1] / S, starts[3] / S, starts[5] / S
    assert len(onsets) == 2, onsets
    assert first - 1 <= onsets[0] <= first + 4
    assert second - 1 <= onsets[1] <= second + 4
    assert speech[int(third) + 4], "the third word is speech, just not an onset"
    assert not speech[: int(first) - 1].any()


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "hum"])
@pytest.mark.parametrize("rms", [0.003, 0.03, 0.3])
def test_noise_only_is_not_speech(kind, rms):
    # Digital silence first, so the noise floor starts far below the noise (the hard case).
    samples = np.concatenate([silence(1.0), noise(kind, 6.0, rms)])
    speech, onsets = detect_speech(samples)
    assert speech.sum() <= 2, f"{kind} noise at rms {rms} flagged {speech.sum()} frames"
    assert onsets == []


@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
def test_speech_in_background_noise(speech_with_silence_wav, kind):
    clean = read_wav_16k(speech_with_silence_wav)
    samples = clean + noise(kind, clean.shape[0] / SR + 1, 0.02, seed=3)[: clean.shape[0]]
    speech, onsets = detect_speech(samples)
    audible = speech_frames(clean)
    assert speech[audible].mean() > 0.85
    assert speech[:48].sum() <= 1, "noise before the speech is not speech"
    assert 49 <= onsets[0] <= 53
    # In noise the quiet word endings around the ~0.4 s sentence pause are masked, so that pause may
    # count as >= 0.5 s; nothing else may.
    assert all(120 <= k <= 128 for k in onsets[1:]), onsets


def test_streaming_equals_offline_and_reports_where_speech_starts(speech_with_silence_wav):
    samples = read_wav_16k(speech_with_silence_wav)
    offline, offline_onsets = detect_speech(samples)
    vad = VoiceActivityDetector(SR, S)
    results = [vad.process(samples[k * S : (k + 1) * S]) for k in range(samples.shape[0] // S)]
    assert [r.speech for r in results] == list(offline[: len(results)])
    onset_frames = [k for k, r in enumerate(results) if r.onset]
    assert onset_frames == offline_onsets
    k = onset_frames[0]
    first_loud = k * S + results[k].onset_offset
    true_start = int(np.argmax(np.abs(samples) > 1e-3))  # 32000 by construction
    assert abs(first_loud - true_start) <= 480, (first_loud, true_start)


def test_config_changes_decisions(hello):
    samples = np.concatenate([silence(0.5), hello, silence(0.3), hello])
    _, default_onsets = detect_speech(samples)
    _, eager_onsets = detect_speech(samples, config=VadConfig(min_silence_s=0.2))
    assert len(default_onsets) == 1 and len(eager_onsets) == 2


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        VoiceActivityDetector().process(np.zeros(320, np.float32))
    with pytest.raises(ValueError, match="1-D"):
        detect_speech(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="band_hz"):
        VadConfig(band_hz=(4000.0, 80.0))
