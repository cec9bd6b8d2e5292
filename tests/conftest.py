"""Shared fixtures: real speech made with espeak-ng (real phonemes, chosen pauses)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SPEECH_TEXT = "Hello everyone, welcome to the stream. Today we talk about real time avatars."


def espeak_wav(path: Path, text: str, *, words_per_minute: int = 150) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (scripts/test.sh installs it)")
    subprocess.run(["espeak-ng", "-s", str(words_per_minute), "-w", str(path), text], check=True)
    return path


def read_wav_16k(path: Path) -> np.ndarray:
    """Decode any audio file to 16 kHz mono float32 with PyAV."""
    import av

    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    import wave

    pcm = np.clip(samples, -1.0, 1.0)
    pcm = (pcm * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory) -> np.ndarray:
    """About 5 s of espeak-ng speech at 16 kHz mono float32 (no leading/trailing silence added)."""
    path = espeak_wav(tmp_path_factory.mktemp("speech") / "speech.wav", SPEECH_TEXT)
    return read_wav_16k(path)


@pytest.fixture(scope="session")
def speech_with_silence_wav(tmp_path_factory, speech_16k) -> Path:
    """2 s silence + speech + 2 s silence, 16 kHz mono WAV; the speech starts at exactly 2.0 s."""
    silence = np.zeros(32000, np.float32)
    samples = np.concatenate([silence, speech_16k, silence])
    return write_wav(tmp_path_factory.mktemp("speech") / "speech_with_silence.wav", samples, 16000)
