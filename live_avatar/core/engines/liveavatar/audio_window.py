"""The live audio window's lookahead in samples: torch-free, so that the preflight (no torch) and the
audio encoder (``audio_features.Wav2VecFeatures``) count it the same way."""

from __future__ import annotations

# wav2vec2's standard conv feature stack (base and large): 320 samples a frame (50 Hz at 16 kHz), each
# frame reading 400 samples; what the preflight assumes before any weights are loaded
WAV2VEC2_HOP_SAMPLES = 320
WAV2VEC2_RECEPTIVE_FIELD_SAMPLES = 400
# a cap on lookahead_s: every second of it is a second more of speech-to-lips (1 s: about two blocks)
MAX_LOOKAHEAD_S = 1.0


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def lookahead_samples(lookahead_s: float, sample_rate: int, hop: int = WAV2VEC2_HOP_SAMPLES,
                      receptive_field: int = WAV2VEC2_RECEPTIVE_FIELD_SAMPLES) -> int:
    """Audio past a block's end that its window holds: ``lookahead_s`` in whole hops, and never less than
    one receptive field (the last frame of a block reads wav2vec frames reaching up to receptive_field - hop
    past its end), so ``lookahead_s=0`` still waits 25 ms at 16 kHz."""
    return max(round_up(int(round(lookahead_s * sample_rate)), hop), receptive_field)
