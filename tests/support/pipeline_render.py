"""Render 12 tiny liveavatar blocks (3 clips: the clip-1 sink refresh included) in a process of its own and
save frames, clean latents and the pipeline's per-rank records to an .npz (tests of the step pipeline).

    python -m tests.support.pipeline_render OUT.npz --num_gpus_dit N [--sink_refresh MODE] [--vae_gpu]
    python -m tests.support.pipeline_render OUT.npz --num_gpus_dit N --through-session

N=1 runs the single-process generator. With N>1 up to ``pipeline_depth`` blocks are in flight, as the
offline renderer keeps them. The audio is seeded noise, the same in every process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from pathlib import Path

import numpy as np
import torch

BLOCKS = 12
SIZE = "64*64"


def audio_blocks(context: int, lookahead: int, samples_per_frame: int = 640):
    from live_avatar.core.contract import AudioBlock

    rng = np.random.default_rng(7)
    for b in range(BLOCKS):
        samples = (rng.standard_normal(context + 12 * samples_per_frame + lookahead) * 0.1).astype(np.float32)
        yield AudioBlock(samples=samples, first_frame=b * 12, num_frames=12, context=context, lookahead=lookahead,
                         speech=np.ones(12, bool), end_of_speech=b == BLOCKS - 1)


def portrait() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (96, 96, 3), dtype=np.uint8)


def render(num_gpus_dit: int, sink_refresh: str, vae_gpu: bool):
    from live_avatar.core.engines.liveavatar.engine import LiveAvatarEngine

    torch.set_num_threads(1)  # every rank gets the same count (same float sums); one is fastest on a shared CPU
    engine = LiveAvatarEngine(tiny=True, size=SIZE, aspect="1:1", seed=11, sink_refresh=sink_refresh,
                              num_gpus_dit=num_gpus_dit, vae_gpu=vae_gpu, pipeline_timeout_s=60)
    frames, latents, traces = [], [], []
    try:
        generator = engine.new_generator(engine.prepare_avatar(portrait()))
        blocks = audio_blocks(generator.context_samples, generator.lookahead_samples)
        if engine.pipeline is None:
            step_block = generator.stepper.step_block
            generator.stepper.step_block = lambda *a, **k: latents.append(step_block(*a, **k).clone()) or latents[-1]
            frames = [generator.generate(block) for block in blocks]
        else:
            generator.return_latents = True
            in_flight = deque()
            for block in [*blocks, *[None] * generator.pipeline_depth]:
                if block is not None:
                    generator.submit(block)
                    in_flight.append(block)
                if in_flight and (block is None or len(in_flight) >= generator.pipeline_depth):
                    in_flight.popleft()
                    frames.append(generator.collect())
                    latents.append(generator.last_latents)
            traces = generator.traces
        generator.close()
    finally:
        engine.close()
    return np.stack(frames), torch.stack(latents).float().numpy(), traces


def render_through_session(num_gpus_dit: int, sink_refresh: str):
    """The same 12 blocks' audio pushed into a buffered StreamSession (what the server runs for a TTS):
    over N > 1 ranks the session keeps several blocks in the pipe. Frames and the session's stats."""
    import asyncio

    from live_avatar.core.engines.liveavatar.engine import LiveAvatarEngine

    torch.set_num_threads(1)
    engine = LiveAvatarEngine(tiny=True, size=SIZE, aspect="1:1", seed=11, sink_refresh=sink_refresh,
                              num_gpus_dit=num_gpus_dit, pipeline_timeout_s=60)
    try:
        return asyncio.run(frames_through_session(engine, BLOCKS))
    finally:
        engine.close()


async def frames_through_session(engine, blocks: int):
    """``blocks`` blocks of seeded noise audio pushed into a buffered StreamSession of ``engine`` (what the
    server runs for a TTS): the frames of its first ``blocks`` chunks ``[blocks, 12, H, W, 3]`` and its stats."""
    from live_avatar.core.stream import StreamConfig

    samples = (np.random.default_rng(7).standard_normal(blocks * 12 * 640) * 0.1).astype(np.float32)
    session = engine.open_session(engine.prepare_avatar(portrait()), config=StreamConfig(buffered=True))
    try:
        session.push_audio(samples)
        session.end_of_speech()
        frames, total = [], blocks * 12
        async for chunk in session.chunks():  # a block may come in parts (generate_parts)
            frames.append(chunk.frames)
            if sum(f.shape[0] for f in frames) >= total:
                break
        return np.concatenate(frames)[:total].reshape(blocks, 12, *frames[0].shape[1:]), session.stats()
    finally:
        await session.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--num_gpus_dit", type=int, default=1)
    p.add_argument("--sink_refresh", default="reencode")
    p.add_argument("--vae_gpu", action="store_true")
    p.add_argument("--through-session", action="store_true", help="push the audio into a buffered StreamSession")
    args = p.parse_args(argv)
    if args.through_session:
        frames, stats = render_through_session(args.num_gpus_dit, args.sink_refresh)
        np.savez(args.out, frames=frames, stats=json.dumps(stats, default=str))
        return 0
    frames, latents, traces = render(args.num_gpus_dit, args.sink_refresh, args.vae_gpu)
    np.savez(args.out, frames=frames, latents=latents, traces=json.dumps(traces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
