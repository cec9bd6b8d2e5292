"""Speech and WAV helpers shared by the tests and the benchmarks: espeak-ng is run here only."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

SPEECH_TEXT = "Hello everyone, welcome to the stream. Today we talk about real time avatars."


class NoSpeechSynthesizer(RuntimeError):
    """espeak-ng is not installed (scripts/test.sh installs it)."""


# A folder of espeak-ng WAVs made on a machine that has espeak-ng, for one that has not (the GPU
# machine): set AVATAR_SPEECH_CACHE on both; the first synthesises and keeps, the second reads.
SPEECH_CACHE_ENV = "AVATAR_SPEECH_CACHE"


def espeak_wav(path: Path, text: str = SPEECH_TEXT, *, words_per_minute: int = 150) -> Path:
    """``text`` spoken by espeak-ng into the WAV file ``path`` (espeak's own rate, 22.05 kHz)."""
    cache = os.environ.get(SPEECH_CACHE_ENV)
    cached = None
    if cache:
        key = hashlib.sha256(f"{words_per_minute}|{text}".encode()).hexdigest()[:24]
        cached = Path(cache) / f"espeak-{key}.wav"
        if cached.is_file():
            shutil.copyfile(cached, path)
            return Path(path)
    if shutil.which("espeak-ng") is None:
        raise NoSpeechSynthesizer("espeak-ng is not installed (apt-get install espeak-ng; scripts/test.sh does)"
                                  + (f", and {cached} is not in the speech cache" if cached else ""))
    subprocess.run(["espeak-ng", "-s", str(words_per_minute), "-w", str(path), text], check=True, capture_output=True)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cached)
    return Path(path)


def read_audio(path: Path, rate: int = 16000) -> np.ndarray:
    """Decode any audio file to mono float32 at ``rate`` with PyAV."""
    import av

    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32)


def read_wav_16k(path: Path) -> np.ndarray:
    return read_audio(path, 16000)


def espeak_speech(text: str = SPEECH_TEXT, rate: int = 16000, *, words_per_minute: int = 150) -> np.ndarray:
    """``text`` spoken by espeak-ng as mono float32 at ``rate``."""
    with tempfile.TemporaryDirectory() as tmp:
        return read_audio(espeak_wav(Path(tmp) / "speech.wav", text, words_per_minute=words_per_minute), rate)


def trim_silence(samples: np.ndarray, rate: int, threshold_db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing silence (10 ms RMS below ``threshold_db``) so callers control every pause."""
    hop = rate // 100
    n = samples.size // hop
    rms = np.sqrt(np.mean(samples[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms) > threshold_db)
    if loud.size == 0:
        raise ValueError("the speech is silent")
    return samples[loud[0] * hop : (loud[-1] + 1) * hop]


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Mono 16-bit PCM WAV of float samples in [-1, 1]."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return Path(path)
