"""Recording one call as a CUDA graph on a side stream: the DiT's denoising steps (step_graphs), the VAE
decoder's steady calls (vae_stream) and wav2vec's live window (audio_features) all record this way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def record_graph(fn: Callable[[], Any], device: torch.device, *, stream: torch.cuda.Stream | None = None,
                 pool: Any = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Record ``fn()`` on ``stream`` (a fresh side stream by default) into ``pool`` (None: the graph's own);
    returns the graph and ``fn``'s output, whose tensors each replay overwrites. The kernels ``fn`` runs
    must be compiled and set up already: a capture runs nothing, and a compile inside it fails it."""
    main = torch.cuda.current_stream(device)
    stream = stream if stream is not None else torch.cuda.Stream(device)
    stream.wait_stream(main)
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA calls of other threads (the server's) meanwhile do not break the recording
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
        out = fn()
    main.wait_stream(stream)
    return graph, out
