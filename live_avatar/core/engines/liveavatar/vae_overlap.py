"""A liveavatar session generator that decodes block k with the VAE while block k+1 is denoised.

On one GPU a block is audio features -> four DiT calls -> the streaming VAE decode, one after the other.
Decoding on a thread and CUDA stream of its own lets the VAE's kernels run beside the next block's DiT,
so a block would cost the DiT plus the VAE's share of the GPU instead of the sum of both wall times, when
the DiT leaves the GPU room. Measured at 320x512 on an H200 (FP8, graphed DiT), it does not: 580 ms a
block against 572 one after the other (the DiT took 529 ms beside the VAE, 418 alone), hence the engine
option ``overlap_vae`` is off by default.

The generator pipelines (``submit()`` / ``collect()``, ``pipeline_depth`` 2), so the live StreamSession
keeps two blocks in it: while the VAE thread decodes block k, the session's worker submits block k+1.
``generate()`` (offline renders, the warm-up, the benchmark) is submit + collect: the same frames.
The budget is charged ``block_cost_s``: the slower of the two stages for the block, each measured where it
ran (the DiT stage until its latents are ready on the GPU).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all

import numpy as np
import torch

from live_avatar.core.contract import AudioBlock

from .generator import BlockStageTimes, LiveAvatarGenerator


class VaeOverlapGenerator(LiveAvatarGenerator):
    pipeline_depth = 2

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="liveavatar-vae")
        cuda = self.engine.device.type == "cuda"
        self._vae_stream = torch.cuda.Stream(self.engine.device) if cuda else None
        self._pending: deque[tuple[Future, BlockStageTimes]] = deque()
        self.block_cost_s: float | None = None

    def submit(self, block: AudioBlock) -> None:
        """Denoise ``block`` now (this thread), queue its decode on the VAE thread."""
        started = time.perf_counter()
        if self.engine.options.sink_refresh == "reencode" and self._pending:
            wait_all([f for f, _ in self._pending])  # that refresh encodes the frames decoded so far
        latents, t = self._denoise(block)
        ready = None
        if self._vae_stream is not None:
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.engine.device))
            ready.synchronize()  # the DiT stage ends when its latents exist (GIL released while waiting)
        t.extra["dit_stage_s"] = time.perf_counter() - started
        self._pending.append((self._decoder.submit(self._decode_on_stream, self.video, latents, ready, t), t))

    def _decode_on_stream(self, video, latents: torch.Tensor, ready, t: BlockStageTimes) -> np.ndarray:
        with torch.inference_mode():
            if self._vae_stream is None:
                return self._decode(video, latents, t)
            with torch.cuda.stream(self._vae_stream):
                self._vae_stream.wait_event(ready)
                return self._decode(video, latents, t)  # ends with a blocking copy to the host

    def collect(self) -> np.ndarray:
        """The frames of the oldest block submitted (waits for its decode; re-raises its failure)."""
        if not self._pending:
            raise RuntimeError("collect() without a block in flight")
        future, t = self._pending.popleft()
        frames = future.result()
        self.block_cost_s = max(t.extra["dit_stage_s"], t.vae_s)
        self._finish_block(t)
        return frames

    def generate(self, block: AudioBlock) -> np.ndarray:
        self.submit(block)
        return self.collect()

    def close(self) -> None:
        if not self._closed:
            self._decoder.shutdown(wait=False, cancel_futures=True)  # a decode under way finishes on its own
            self._pending.clear()
        super().close()
