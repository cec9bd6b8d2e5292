"""What a pipeline rank does with a message, and the main loop of ranks 1..N-1
(``python -m live_avatar.core.engines.liveavatar.pipeline.worker``, started by :mod:`.launcher`).

Messages (dicts, ``kind`` first):

* ``session``  sid, pipeline, size (w, h), ref, motion, text, pixels, sink_refresh: prefill this rank's
  stepper (its steps' rings only) and/or, on the decoding rank, start the VAE stream.
* ``latents``  sid, block, step, x, tokens, glob, offsets, refresh, trace: run this rank's steps of the
  block (the clip-1 sink refresh first when ``refresh`` rides along), then hand the latents to the owner of
  the next step, or the clean latents to the decoding rank (``clean``).
* ``clean``    sid, block, x, trace: decode (decoding rank), send ``frames`` to rank 0; the latent (and, for
  "reencode", the motion latents) the sink refresh needs go to rank 0 as ``refresh`` as soon as they exist.
* ``end`` sid (forget a session), ``shutdown`` (exit), ``failed`` (to rank 0: error).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from ..options import LiveAvatarOptions
from .plan import PipelinePlan
from .transport import Channel

logger = logging.getLogger(__name__)


@dataclass
class _Session:
    pipeline: int
    sink_refresh: str
    return_latents: bool = False  # frames messages carry the clean latents too (tests, parity checks)
    stepper: Any = None  # CausalStepper holding this rank's steps
    stream: Any = None  # LatentVideoStream (decoding rank)
    recent: deque = field(default_factory=deque)
    first_latent: torch.Tensor | None = None
    last_done: float | None = None  # when this rank finished its previous block (bubble)


def draw_offsets(rng: random.Random, streaming) -> list[int]:
    """The rolling-reference RoPE offsets of one block's steps, in the single-process stepper's order."""
    if streaming.ref_rope_offset_mode == "fixed":
        return [streaming.ref_rope_fixed_offset] * streaming.num_steps
    return [rng.randint(*streaming.ref_rope_offset_range) for _ in range(streaming.num_steps)]


class RankWorker:
    """One rank's sessions: its steppers (its steps only) and, on the decoding rank, the VAE streams."""

    def __init__(self, rank: int, plan: PipelinePlan, channel: Channel, dit, model_config, codec, device, dtype,
                 graph_context=None) -> None:
        self.rank, self.plan, self.channel = rank, plan, channel
        self.dit, self.model_config, self.codec = dit, model_config, codec
        self.device, self.dtype = device, dtype
        self.graph_context = graph_context  # this rank's steppers record their calls as CUDA graphs (one per ring length)
        self.streaming = model_config.streaming
        self.sessions: dict[int, _Session] = {}

    def emit(self, dst: int, body: dict) -> float:
        """Send (or, to this rank itself, handle or keep) a message; returns the seconds spent sending."""
        if dst != self.rank:
            return self.channel.send(dst, body)
        if self.rank == 0 and body["kind"] in ("frames", "refresh"):
            self.channel.keep(self.rank, body)
        else:
            self.handle(body)
        return 0.0

    # ---- messages -----------------------------------------------------------------------------------
    def handle(self, body: dict) -> bool:
        """Act on one message; False after ``shutdown``."""
        kind = body["kind"]
        if kind == "session":
            self._open(body)
        elif kind == "latents":
            self._steps(body)
        elif kind == "clean":
            self._decode(body)
        elif kind == "end":
            self.sessions.pop(body["sid"], None)
        elif kind == "shutdown":
            return False
        else:
            raise ValueError(f"rank {self.rank}: unknown message {kind!r}")
        return True

    def _open(self, body: dict) -> None:
        from ..config import LatentGeometry
        from ..stepper import CausalStepper

        pipe = self.plan.pipelines[body["pipeline"]]
        session = _Session(body["pipeline"], body["sink_refresh"], bool(body.get("return_latents")))
        w, h = body["size"]
        steps = pipe.steps_of(self.rank)
        with torch.inference_mode():
            if steps:
                session.stepper = CausalStepper(self.dit, self.streaming, LatentGeometry.from_pixels(h, w), steps=steps)
                if self.graph_context is not None:
                    session.stepper.use_graphs(self.graph_context)
                session.stepper.prefill(body["ref"], body["motion"], body["text"].to(self.device, self.dtype))
            if pipe.vae_rank == self.rank:
                session.stream = self.codec.stream()
                session.stream.start(body["motion"].to(self.device, self.dtype))
                pixels = body["pixels"].to(self.device, self.dtype)
                session.recent = deque([pixels] * self.codec.config.motion_frames, maxlen=self.codec.config.motion_frames)
        self.sessions[body["sid"]] = session

    def _steps(self, body: dict) -> None:
        from ..sampler import euler_update
        from ..stepper import AudioTokens

        t_in = time.perf_counter()
        session = self.sessions.get(body["sid"])
        if session is None:  # a block still in flight when its session ended
            return
        stepper = session.stepper
        if stepper.block_index != body["block"]:
            raise RuntimeError(f"rank {self.rank}: block {body['block']} arrived, expected {stepper.block_index}")
        with torch.inference_mode():
            refresh = body.get("refresh")
            if refresh is not None:  # before the first block of clip 1, on every rank, as the block passes
                motion = refresh["motion"]
                stepper.refresh_sink(refresh["ref"].to(self.device, self.dtype),
                                     None if motion is None else motion.to(self.device, self.dtype))
            # the audio encoder runs in float32 on GPUs too: keep the dtype the tokens were made in
            audio = AudioTokens(body["tokens"].to(self.device), body["glob"].to(self.device))
            x = body["x"].to(self.device, self.dtype)
            sig = stepper.schedule.sigmas
            stepper.ref_offsets = []
            for step in stepper.owned_steps:
                velocity = stepper.denoise_step(step, x, audio, ref_offset=body["offsets"][step])
                x = euler_update(x, velocity, sig[step], sig[step + 1])
            stepper.advance()
            t_issued = time.perf_counter()
            self._sync()
        record = self._record(session, "steps", body, t_in, t_issued)
        trace = body["trace"] + [record]
        pipe = self.plan.pipelines[session.pipeline]
        last = stepper.owned_steps[-1]
        # perf_counter is the host's monotonic clock: a receiver's received_at minus this is the hand-off time
        record["sent_at"] = time.perf_counter()
        if last + 1 < self.streaming.num_steps:
            self.emit(pipe.owner(last + 1), {**body, "step": last + 1, "x": x, "refresh": refresh, "trace": trace,
                                             "received_at": None})
        else:
            self.emit(pipe.vae_rank, {"kind": "clean", "sid": body["sid"], "block": body["block"], "x": x,
                                      "trace": trace})

    def _decode(self, body: dict) -> None:
        from ..vae_stream import to_uint8_frames

        t_in = time.perf_counter()
        session = self.sessions.get(body["sid"])
        if session is None:
            return
        block, x = body["block"], body["x"].to(self.device, self.dtype)
        bpc = self.streaming.blocks_per_clip
        if block == 0 and session.sink_refresh != "none":
            session.first_latent = x[:, :1].clone()
            if session.sink_refresh == "keep_motion":  # needed before block bpc enters rank 0: send it now
                self.emit(0, {"kind": "refresh", "sid": body["sid"], "ref": session.first_latent, "motion": None})
        with torch.inference_mode():
            pixels = session.stream.decode_block(x)
            session.recent.extend(pixels.unbind(1))
            frames = to_uint8_frames(pixels).numpy()
            if block == bpc - 1 and session.sink_refresh == "reencode":
                motion = self.codec.encode(torch.stack(list(session.recent), dim=1))
                self.emit(0, {"kind": "refresh", "sid": body["sid"], "ref": session.first_latent, "motion": motion})
            t_issued = time.perf_counter()
            self._sync()
        record = self._record(session, "vae", body, t_in, t_issued)
        record["sent_at"] = time.perf_counter()
        self.emit(0, {"kind": "frames", "sid": body["sid"], "block": block, "frames": frames,
                      "latents": x if session.return_latents else None, "trace": body["trace"] + [record]})

    def _record(self, session, role: str, body: dict, t_in: float, t_issued: float) -> dict:
        """This rank's record of the block it just finished (for the trace); the bubble is the wait since its
        previous one. ``host_s`` is until this thread had issued the block's work, ``device_wait_s`` the wait
        for the device after that: a long host part means the host (its threads, the GIL, a synchronising
        call) held the GPU back, a long wait that the GPU itself was slow."""
        t_done = time.perf_counter()
        record = {"rank": self.rank, "role": role, "received_at": body.get("received_at"), "start": t_in,
                  "end": t_done, "compute_s": t_done - t_in, "host_s": t_issued - t_in, "device_wait_s": t_done - t_issued,
                  "peak_memory_bytes": self._peak_memory(),
                  "bubble_s": None if session.last_done is None else max(0.0, t_in - session.last_done)}
        session.last_done = t_done
        return record

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _peak_memory(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None


def worker_main() -> int:
    """A rank 1..N-1 process: join the group, load this rank's parts, serve messages until ``shutdown``."""
    from . import launcher

    env = launcher.WorkerEnvironment.from_environ()
    channel = None
    try:
        channel, plan = launcher.join(env)
        opts = LiveAvatarOptions.from_kwargs(env.options)
        channel.wait_for(lambda m: m.body["kind"] == "load", None, "rank 0's go-ahead to load")
        device, dtype = launcher.rank_device(env, opts)
        from .rank_parts import load_rank_parts

        parts = load_rank_parts(opts, device, dtype, with_dit=plan.pipeline_of(env.rank) is not None,
                                with_vae=plan.decodes(env.rank))
        from ..step_graphs import GraphContext, graphs_wanted

        graphs = GraphContext.for_device(device) if parts.dit is not None and graphs_wanted(opts.cuda_graphs, device) else None
        worker = RankWorker(env.rank, plan, channel, parts.dit, parts.model_config, parts.codec, device, dtype, graphs)
        memory = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        channel.send(0, {"kind": "ready", "rank": env.rank, "device": str(device), "memory_bytes": memory,
                         "dit": parts.dit is not None, "vae": parts.codec is not None})
        while True:
            message = channel.wait_for(lambda m: True, None, "the next message")
            message.body["received_at"] = message.received_at
            if not worker.handle(message.body):
                break
        return 0
    except BaseException as exc:  # tell rank 0 why, then leave (it ends the others)
        logger.exception("pipeline rank %s failed", env.rank)
        if channel is not None:
            try:
                channel.send(0, {"kind": "failed", "rank": env.rank, "error": f"{type(exc).__name__}: {exc}"})
            except RuntimeError:
                logger.warning("rank %s could not tell rank 0 (it is gone)", env.rank)
        return 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"rank {os.environ.get('RANK', '?')}: %(message)s")
    code = worker_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the receiver thread sits in a gloo receive: do not wait for interpreter teardown
