"""Shared fixtures: real speech made with espeak-ng (real phonemes, chosen pauses)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support import speech
from tests.support.speech import SPEECH_TEXT, read_wav_16k, write_wav

# Admission by measured CPU (server/capacity.py) depends on how busy this machine is; tests of other
# limits must not. tests/unit/test_capacity.py and tests/integration/test_capacity_admission.py
# switch it back on (servers started by tests inherit the variable).
os.environ.setdefault("AVATAR_CAPACITY_ADMISSION", "off")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# tests/gpu need a CUDA device: run them on the GPU machine (python3 -m pytest tests/gpu); elsewhere
# they are not collected (no skips for what cannot run here)
collect_ignore = [] if _cuda_available() else ["gpu"]


def espeak_wav(path: Path, text: str, *, words_per_minute: int = 150) -> Path:
    """espeak-ng speech into ``path``; the test is skipped where espeak-ng is missing."""
    try:
        return speech.espeak_wav(path, text, words_per_minute=words_per_minute)
    except speech.NoSpeechSynthesizer as err:
        pytest.skip(str(err))


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
