"""The live windows' wav2vec call replayed from a CUDA graph gives the eager call's features."""

from __future__ import annotations

import numpy as np
import torch

from live_avatar.core.engines.liveavatar.audio_features import (
    AudioFeatureConfig,
    Wav2VecFeatures,
)
from live_avatar.core.engines.liveavatar.tiny_weights import write_tiny_wav2vec

SPF = 640


def test_graphed_windows_equal_eager_ones_window_after_window(tmp_path):
    folder = write_tiny_wav2vec(tmp_path / "wav2vec", seed=1)
    config = AudioFeatureConfig(context_s=1.0, lookahead_s=0.1)
    eager = Wav2VecFeatures.from_folder(folder, device="cuda", dtype=torch.bfloat16, config=config)
    graphed = Wav2VecFeatures.from_folder(folder, device="cuda", dtype=torch.bfloat16, config=config)
    assert graphed.use_cuda_graphs()
    c, la = eager.context_samples, eager.lookahead_samples
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(c + 40 * SPF + la)).astype(np.float32)
    previous = None
    for first in (25, 37, 49):  # three windows: the first records the graph, the others replay it with new input
        window = audio[first * SPF - c: (first + 12) * SPF + la]
        expected = eager.block(window, first, 12, c, la)
        got = graphed.block(window, first, 12, c, la)
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)  # bf16; the same kernels in practice
        if previous is not None:
            assert (got - previous).abs().max() > 0.1  # a replay reads the new window
        previous = got
    assert len(graphed._graphs) == 1
