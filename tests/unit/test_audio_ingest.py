"""AudioIngest (any producer's audio -> 16 kHz mono float32) and OutputAudioResampler (-> 48 kHz s16)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from live_avatar.core.audio.ingest import AudioIngest, OutputAudioResampler


def sine(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.fft.rfftfreq(x.shape[0], 1.0 / rate)[np.argmax(spectrum)])


def max_step(x: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(x.astype(np.float64)))))


def opus_like_frames(signal_48k: np.ndarray, channels: int, fmt: str = "s16") -> list[av.AudioFrame]:
    """20 ms frames as aiortc hands them out, with jumping/repeating pts."""
    frames = []
    for i, start in enumerate(range(0, signal_48k.shape[0], 960)):
        mono = signal_48k[start : start + 960]
        if fmt == "s16":
            inter = np.repeat((mono * 32767).astype(np.int16), channels)
            frame = av.AudioFrame.from_ndarray(inter[None, :], format="s16", layout="stereo" if channels == 2 else "mono")
        else:  # planar float
            planes = np.stack([mono] * channels)
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout="stereo" if channels == 2 else "mono")
        frame.sample_rate = 48000
        frame.pts = [0, 960, 5, 99999, 5][i % 5]
        frames.append(frame)
    return frames


@pytest.mark.parametrize("channels,fmt", [(2, "s16"), (1, "s16"), (2, "fltp")])
def test_push_frame_resamples_to_16k_mono_continuously(channels, fmt):
    src = sine(440, 48000, 1.0)
    ingest = AudioIngest(16000)
    frames = opus_like_frames(src, channels, fmt)
    out = np.concatenate([ingest.push_frame(f) for f in frames] + [ingest.flush()])
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(out.shape[0] - 16000) <= 2
    assert abs(peak_hz(out, 16000) - 440) < 5
    # Same amplitude for stereo (a downmix, not a sum) and no clicks at the 20 ms joins.
    assert 0.45 < np.max(np.abs(out[200:-200])) < 0.55
    assert max_step(out[50:-50]) < 1.2 * 2 * np.pi * 440 / 16000 * 0.5
    assert frames[3].pts == 99999, "the caller's frame must not be modified"


def test_push_frame_survives_a_format_change_mid_stream():
    src = sine(300, 48000, 0.4)
    ingest = AudioIngest()
    frames = opus_like_frames(src[:9600], 1) + opus_like_frames(src[9600:], 2)
    out = np.concatenate([ingest.push_frame(f) for f in frames] + [ingest.flush()])
    assert abs(out.shape[0] - 6400) <= 4
    assert abs(peak_hz(out, 16000) - 300) < 5


def test_rate_change_mid_stream_loses_no_audio():
    ingest = AudioIngest()
    first = ingest.push_pcm((sine(440, 48000, 0.5) * 32767).astype("<i2").tobytes(), 48000)
    second = ingest.push_pcm((sine(440, 24000, 0.5) * 32767).astype("<i2").tobytes(), 24000)
    out = np.concatenate([first, second, ingest.flush()])
    assert abs(out.shape[0] - 16000) <= 4, "0.5 s + 0.5 s at 16 kHz"
    assert abs(peak_hz(out, 16000) - 440) < 5


def test_16k_mono_passes_through_unchanged():
    x = sine(300, 16000, 0.1)
    np.testing.assert_allclose(AudioIngest().push_pcm(x.astype("<f4"), 16000, sample_format="f32"), x, atol=1e-7)


def test_push_pcm_bytes_and_arrays():
    src = sine(1000, 24000, 0.5)
    pcm = (src * 32767).astype("<i2")
    ingest = AudioIngest()
    out = np.concatenate([ingest.push_pcm(pcm[i : i + 480].tobytes(), 24000) for i in range(0, 12000, 480)])
    out = np.concatenate([out, ingest.flush()])
    assert abs(out.shape[0] - 8000) <= 2
    assert abs(peak_hz(out, 16000) - 1000) < 5
    stereo_f32 = np.repeat(sine(500, 16000, 0.25), 2).astype("<f4")
    same_rate = AudioIngest().push_pcm(stereo_f32.tobytes(), 16000, channels=2, sample_format="f32")
    assert abs(same_rate.shape[0] - 4000) <= 20
    np.testing.assert_allclose(
        AudioIngest().push_pcm(stereo_f32, 16000, channels=2, sample_format="f32")[:3000], same_rate[:3000], atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(data=b"\x00" * 641, rate=16000), "whole number"),
        (dict(data=b"\x00" * 642, rate=16000, channels=2), "whole number"),
        (dict(data=b"\x00" * 640, rate=16000, sample_format="u8"), "sample_format"),
        (dict(data=b"\x00" * 640, rate=4000), "sample rate"),
        (dict(data=b"\x00" * 640, rate=16000, channels=0), "channels"),
        (dict(data=np.zeros(10, np.float32), rate=16000), "s16 PCM"),
        (dict(data=np.array([0.0, np.nan], np.float32), rate=16000, sample_format="f32"), "NaN"),
    ],
)
def test_push_pcm_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AudioIngest().push_pcm(**kwargs)


def test_push_frame_rejects_non_frames():
    with pytest.raises(TypeError, match="AudioFrame"):
        AudioIngest().push_frame(np.zeros(960, np.int16))


def test_output_resampler_is_48k_int16_without_clicks_at_chunk_joins():
    src = sine(440, 16000, 1.0, amp=0.8)
    resampler = OutputAudioResampler(16000, 48000)
    parts = [resampler.push(src[i : i + 1280]) for i in range(0, 16000, 1280)]  # 2-frame chunks
    out = np.concatenate(parts + [resampler.flush()])
    assert out.dtype == np.int16
    assert abs(out.shape[0] - 48000) <= 3
    assert abs(peak_hz(out.astype(np.float32), 48000) - 440) < 5
    assert max_step(out[100:-100]) < 1.2 * 2 * np.pi * 440 / 48000 * 0.8 * 32767


def test_output_resampler_saturates_instead_of_wrapping():
    resampler = OutputAudioResampler()
    out = np.concatenate([resampler.push(np.full(1600, 1.7, np.float32)), resampler.flush()])
    assert out[200:-200].min() > 32000, "over-range input must clip to full scale, not wrap negative"
    with pytest.raises(ValueError):
        resampler.push(np.zeros(10, np.int16))
