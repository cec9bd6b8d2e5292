"""Rank 0's side of the pipeline: the engine's :class:`StepPipeline` (ranks, plan, one pipeline per session)
and :class:`PipelinedGenerator`, the per-session BlockGenerator.

``submit(block)`` runs the front end (wav2vec features, the block's audio tokens, its noise and RoPE
offsets), then rank 0's own steps, and hands the latents on; ``collect()`` returns the oldest submitted
block's frames. Submitting block k+1 before collecting block k is what fills the pipe (the offline
renderer keeps ``pipeline_depth`` blocks in flight); ``generate(block)`` is submit + collect.

Clip-boundary sink refresh: the decoding rank sends the latent it needs the moment block 0 is clean
("keep_motion"), and it rides to every rank with block ``blocks_per_clip``'s latents, so the pipe does not
drain. "reencode" (the default) needs the VAE encoding of the frames up to the end of clip 0, so block
``blocks_per_clip`` waits for block ``blocks_per_clip - 1``'s frames once per session.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from live_avatar.core.contract import AudioBlock

from ..generator import BlockStageTimes, LiveAvatar, LiveAvatarGenerator
from .launcher import RankGroup, check_failed, make_plan
from .transport import PipelineError
from .worker import RankWorker, draw_offsets

if TYPE_CHECKING:
    from ..engine import LiveAvatarEngine


class StepPipeline:
    """Everything rank 0 holds for ``--num_gpus_dit N``: the ranks, the plan, and which pipeline is free."""

    def __init__(self, engine: LiveAvatarEngine) -> None:
        opts = engine.options
        streaming = engine.parts.model_config.streaming
        self.plan = make_plan(opts, streaming.num_steps)
        self.timeout_s = opts.pipeline_timeout_s
        self.ranks = RankGroup(opts, self.plan)
        # rank 0's steps run under the engine's compute lock, so they may share its graph context
        self.worker = RankWorker(0, self.plan, self.ranks.channel, engine.parts.dit, engine.parts.model_config,
                                 engine.parts.codec, engine.device, engine.dtype, engine.graph_context)
        self._free = list(range(len(self.plan.pipelines)))
        self._lock = threading.Lock()
        self._sids = itertools.count(1)
        self.failure: str | None = None  # set once a rank is gone: every later session is refused with it
        self.closed_sessions: set[int] = set()  # their blocks still in flight are dropped when they arrive
        self.ranks.channel.unwanted = lambda m: m.body.get("sid") in self.closed_sessions

    @property
    def capacity(self) -> int:
        return len(self.plan.pipelines)

    def acquire(self) -> tuple[int, int]:
        with self._lock:
            self.failure = self.failure or self.ranks.first_dead()
            if self.failure:
                raise PipelineError(f"the step pipeline is down: {self.failure}")
            if not self._free:
                raise PipelineError("every pipeline is busy")
            return self._free.pop(0), next(self._sids)

    def release(self, pipeline: int) -> None:
        with self._lock:
            self._free.append(pipeline)
            self._free.sort()

    def wait(self, match, what: str):
        try:
            message = self.ranks.channel.wait_for(lambda m: m.body["kind"] == "failed" or match(m), self.timeout_s, what)
            check_failed(message.body)
        except PipelineError as exc:
            self.failure = self.failure or str(exc)
            raise
        return message

    def emit(self, dst: int, body: dict) -> float:
        try:
            return self.worker.emit(dst, body)
        except PipelineError as exc:
            self.failure = self.failure or str(exc)
            raise

    def status(self) -> dict:
        """For /healthz: the plan, the ranks' devices and loaded parts, and the failure once a rank is gone."""
        self.failure = self.failure or self.ranks.first_dead()
        return {"world_size": self.plan.world_size, "plan": self.plan.describe(), "failure": self.failure,
                "ranks": {rank: {k: v for k, v in info.items() if k != "kind"} for rank, info in self.ranks.ready.items()}}

    def close(self) -> None:
        self.ranks.close()


class PipelinedGenerator:
    """BlockGenerator of one session over the step pipeline (same frames as :class:`LiveAvatarGenerator`)."""

    def __init__(self, engine: LiveAvatarEngine, pipeline: StepPipeline, avatar: LiveAvatar, prompt: str | None, *,
                 return_latents: bool = False) -> None:
        from ..config import LatentGeometry
        from ..sampler import ClipNoise

        self.engine, self.pipeline, self.avatar = engine, pipeline, avatar
        parts = engine.parts
        self.streaming = parts.model_config.streaming
        self.block_frames = self.streaming.video_frames_per_block
        self.context_samples = parts.audio.context_samples
        self.lookahead_samples = parts.audio.lookahead_samples
        self.index, self.sid = pipeline.acquire()
        self.pipe = pipeline.plan.pipelines[self.index]
        # more than one block in flight per rank buys nothing: one per rank, one for the VAE, one for rank 0
        self.pipeline_depth = len(self.pipe.ranks) + 1
        w, h = engine.size
        self.size = (w, h)
        self.geometry = LatentGeometry.from_pixels(h, w)
        noise_shape = (parts.dit.config.in_dim, self.streaming.ring_latent_frames, self.geometry.latent_height,
                       self.geometry.latent_width)
        self.noise = ClipNoise(engine.options.seed, noise_shape, self.streaming.latent_frames_per_block,
                               device=engine.device, dtype=engine.dtype)
        self.rope_rng = random.Random(engine.options.seed)  # the single-process generator's seeding
        self._prompt = prompt if prompt else engine.options.prompt
        self._started = False
        self._closed = False
        self.submitted = 0
        self.blocks_done = 0
        self._pending: deque[tuple[int, float]] = deque()
        self.timings = BlockStageTimes()
        self.return_latents = return_latents
        self.last_latents: torch.Tensor | None = None  # the clean latents of the last collected block (return_latents)
        self.traces: list[dict] = []  # per finished block: when it was submitted/collected and each rank's record
        self.block_cost_s: float | None = None  # the busiest rank's compute on the last collected block

    def start(self) -> None:
        t0 = time.perf_counter()
        with self.engine.compute_lock, torch.inference_mode():
            context = self.engine.parts.text.encode(self._prompt)
        body = {"kind": "session", "sid": self.sid, "pipeline": self.index, "size": self.size,
                "ref": self.avatar.reference_latent, "motion": self.avatar.motion_latents, "text": context,
                "pixels": self.avatar.pixels, "sink_refresh": self.engine.options.sink_refresh,
                "return_latents": self.return_latents}
        for rank in dict.fromkeys((*self.pipe.ranks, self.pipe.vae_rank)):
            with self.engine.compute_lock:
                self.pipeline.emit(rank, body if rank == self.pipe.vae_rank else {**body, "pixels": None})
        self._started = True
        self.timings.prefill_s = time.perf_counter() - t0

    def _audio_tokens(self, features: torch.Tensor):
        from ..audio_encoder import encode_audio_block

        out = encode_audio_block(self.engine.parts.dit.casual_audio_encoder, features[None].to(self.engine.dtype),
                                 left_pad_frames=self.streaming.motion_frames,
                                 keep_frames=self.streaming.latent_frames_per_block)
        return out["tokens"][0], out["global"][0, :, 0]

    def submit(self, block: AudioBlock) -> None:
        """Start one block down the pipe (returns once rank 0's own steps are done and handed on)."""
        if self._closed:
            raise RuntimeError("generator is closed")
        if block.num_frames != self.block_frames:
            raise ValueError(f"liveavatar blocks have {self.block_frames} frames, got {block.num_frames}")
        if not self._started:
            self.start()
        k = self.submitted
        t0 = time.perf_counter()
        refresh = None
        if k == self.streaming.blocks_per_clip and self.engine.options.sink_refresh != "none":
            message = self.pipeline.wait(lambda m: m.body["kind"] == "refresh" and m.body["sid"] == self.sid,
                                         "the latent of the clip-1 sink refresh")
            refresh = {"ref": message.body["ref"], "motion": message.body["motion"]}
        t_refresh = time.perf_counter()
        with self.engine.compute_lock, torch.inference_mode():
            features = self.engine.parts.audio.block_features(block)
            tokens, glob = self._audio_tokens(features)
            t_front = time.perf_counter()
            packet = {"kind": "latents", "sid": self.sid, "block": k, "step": 0, "x": self.noise.block(k),
                      "tokens": tokens, "glob": glob, "offsets": draw_offsets(self.rope_rng, self.streaming),
                      "refresh": refresh,
                      "trace": [{"rank": 0, "role": "front", "start": t_refresh, "end": t_front, "sent_at": t_front,
                                 "compute_s": t_front - t_refresh,
                                 "refresh_wait_s": t_refresh - t0}]}
            self.pipeline.emit(self.pipe.owner(0), packet)
        self.submitted += 1
        self._pending.append((k, t0))

    def collect(self) -> np.ndarray:
        """The frames ``[12, H, W, 3]`` of the oldest submitted block (waits for them)."""
        if not self._pending:
            raise RuntimeError("collect() without a submitted block")
        k, t_submit = self._pending.popleft()
        message = self.pipeline.wait(
            lambda m: m.body["kind"] == "frames" and m.body["sid"] == self.sid and m.body["block"] == k,
            f"the frames of block {k}")
        now = time.perf_counter()
        message.body["trace"].append({"rank": 0, "role": "collect", "received_at": message.received_at})
        self.traces.append({"block": k, "submitted": t_submit, "collected": now, "ranks": message.body["trace"]})
        del self.traces[:-64]
        self.timings = BlockStageTimes(total_s=now - t_submit, extra={"ranks": message.body["trace"]})
        busy: dict[int, float] = {}
        for record in message.body["trace"]:
            busy[record["rank"]] = busy.get(record["rank"], 0.0) + record.get("compute_s", 0.0)
        self.block_cost_s = max(busy.values())  # the busiest rank's time on this block: what bounds throughput
        self.last_latents = message.body.get("latents")
        self.blocks_done += 1
        return message.body["frames"]

    def generate(self, block: AudioBlock) -> np.ndarray:
        self.submit(block)
        return self.collect()

    # the same answers as the single-process generator: no mouth state, no resumable state
    reset_motion_to_idle = LiveAvatarGenerator.reset_motion_to_idle
    load_state_dict = LiveAvatarGenerator.load_state_dict

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError("the liveavatar engine cannot save a session for --resume: its state is the KV rings "
                                  "and sink on every pipeline rank; re-run the clip instead")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # the ranks forget the session; blocks still in flight for it are dropped where they arrive
        ended = not self._started or bool(self.pipeline.failure)
        for rank in dict.fromkeys((*self.pipe.ranks, self.pipe.vae_rank)):
            if ended:
                break
            try:
                self.pipeline.emit(rank, {"kind": "end", "sid": self.sid})
            except PipelineError:
                ended = True  # the pipeline is down; its failure is kept for the next session
        self.pipeline.closed_sessions.add(self.sid)
        self.pipeline.ranks.channel.discard(lambda m: m.body.get("sid") == self.sid)  # those that came already
        self.pipeline.release(self.index)
        self.engine._release_session()
