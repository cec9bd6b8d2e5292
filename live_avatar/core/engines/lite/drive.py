"""Drive a block generator over a whole audio array, offline (benchmarks, tests, previews).

Builds the same ``AudioBlock`` windows the live runtime does (``block_window``): frame k covers
samples [k*S, (k+1)*S); each block adds the generator's context before and lookahead after,
zeros outside the audio.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from live_avatar.core.audio.timeline import block_window
from live_avatar.core.contract import AudioBlock, BlockGenerator


def audio_blocks(audio: np.ndarray, generator: BlockGenerator, *, samples_per_frame: int,
                 first_frame: int = 0, num_frames: int | None = None) -> Iterator[AudioBlock]:
    """Blocks of ``generator.block_frames`` frames covering ``audio`` (the last block may be shorter)."""
    audio = np.asarray(audio, np.float32).reshape(-1)
    S, B = samples_per_frame, generator.block_frames
    C, L = generator.context_samples, generator.lookahead_samples
    total = -(-len(audio) // S) if num_frames is None else first_frame + num_frames
    for first in range(first_frame, total, B):
        n = min(B, total - first)
        samples = block_window(audio, first, n, S, C, L)
        speech = np.array([np.abs(audio[(first + i) * S : (first + i + 1) * S]).max(initial=0) > 1e-3 for i in range(n)])
        yield AudioBlock(samples, first, n, C, L, speech)
