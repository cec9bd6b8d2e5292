"""CUDA graphs of the denoising calls and the sink call of one :class:`~.stepper.CausalStepper`.

A denoising call of the 14B DiT is ~40 blocks of compiled halves with eager RoPE, ring writes and
attention between them: thousands of kernel launches from one Python thread. Launched one by one,
the GPU waits whenever that thread does (the GIL held by the event loop or an encoder thread, guard
checks, the allocator): the likely part of why the DiT took 499 ms a block inside a live server and
456 ms alone (320x512, H200). Recorded once as a CUDA graph, a call is one launch.

What varies between calls of one step is made a tensor that a graph reads from a fixed address:
the noisy latents, the audio tokens, the two RoPE rotations (block position, rolling reference
offset) and the ring rows the block writes (an ``index_copy_``, not a Python slice). The number of
valid ring rows is a Python int: it grows by a block per block until the ring is full (block
``blocks_per_clip - 1``) and stays there, so each step has one graph per ring length (four: the ring
holds a clip of 4 blocks), all recorded at the session's prefill (:meth:`StepGraphs.record_ahead`;
the server prefills while the peer connects; the engine's ``reuse_sessions`` keeps them for the next
session). A capture runs no kernel, so placeholders in the statics do. Until 2026-12-04 only the
full-ring calls were graphed and a session's first three blocks ran eagerly; inside a live server the
first block took 826 ms against 470 ms a graphed block (320x512, H200; the eager calls are the likely
part, its stages were not recorded then: ``first_blocks_ms`` in the session stats now does), its frame
came late and the session carried that lateness until a silent block was skipped.
Recorded by the block that first needs it instead, each graph cost ~0.1 s more than a replay. The
first recording of each frame size and ring length follows one eager call that compiles its kernels
and sets up its attention (a compile inside a capture fails it). A filling ring's call whose capture
fails anyway runs eagerly in that size's sessions (``GraphContext.unrecordable``); a failed full-ring
capture leaves the session without graphs.

The sink call (``refresh_sink``: at the prefill, before clip 1, at an avatar change) is one more graph,
recorded at the prefill after that prefill's own ungraphed sink call: its inputs are the reference and
motion latents (statics), its RoPE is fixed (``stepper.sink_call_rot``), and it writes the sink K and
each ring's sink V in place. Ungraphed, the refresh before clip 1 took 228-280 ms (256x384, H100).

Addresses that a graph reads stay fixed for the stepper's life: the rings, the sink, the text K/V
(``set_text`` copies a new prompt into them) and the statics below. Every stepper's graphs share one
memory pool for their intermediates and one recording stream (a :class:`GraphContext` per engine):
calls never overlap (the engine's compute lock), and each output is copied out before the next replay.

Without a context the same static-buffer path runs eagerly: the CPU tests check it against the
ordinary path; tests/gpu checks the recorded graphs against both on a CUDA machine.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .rope import rotation

if TYPE_CHECKING:
    from .stepper import AudioTokens, CausalStepper

log = logging.getLogger(__name__)


def graphs_wanted(option: bool | None, device: torch.device) -> bool:
    """The engine option ``cuda_graphs``: as given, or (None) on CUDA devices."""
    return bool(option) if option is not None else device.type == "cuda"


@dataclass
class GraphContext:
    """What the steppers of one engine share: the graphs' memory pool and the stream they are recorded
    on. The first recording of each geometry is preceded by one eager call: it compiles that geometry's
    kernels (a compile inside a capture fails it) and does the lazy cuBLAS and attention set-up."""

    pool: Any = None
    stream: Any = None  # None: the stand-in context of the CPU tests (eager calls on the current stream)
    warmed: set = field(default_factory=set)  # (StepGraphs.geometry, ring rows) that ran their eager call
    # (StepGraphs.geometry, ring rows) of a filling ring whose capture failed: those calls run eagerly
    unrecordable: set = field(default_factory=set)

    @classmethod
    def for_device(cls, device: torch.device) -> "GraphContext":
        return cls(pool=torch.cuda.graph_pool_handle(), stream=torch.cuda.Stream(device))

    def renew(self) -> None:
        """A fresh pool and stream after a failed capture: the allocator keeps the failed capture's pool
        marked as recording, and every later capture into it fails ("already recording to mempool_id")."""
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(self.stream.device)


@dataclass
class _Recorded:
    graph: Any  # torch.cuda.CUDAGraph, or None when running eagerly
    out: torch.Tensor | None


class StepGraphs:
    def __init__(self, stepper: "CausalStepper", context: GraphContext | None) -> None:
        """``context`` None: the static-buffer path runs eagerly (CPU tests)."""
        if context is not None and stepper.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        # a weak reference: the stepper owns this object, and a cycle would keep a closed session's KV rings
        # (~31 GB at 320x512) alive until a full garbage collection (the likely cause of the benchmark's 29 GB
        # higher peak with graphs, where its second session starts after the first closed)
        self.stepper, self.context = weakref.proxy(stepper), context
        s, g, cfg = stepper, stepper.geometry, stepper.model.config
        dev = stepper.device
        rot_dtype = torch.complex128 if s.dtype in (torch.float32, torch.float64) else torch.complex64
        self.x = torch.zeros(cfg.in_dim, s.streaming.latent_frames_per_block, g.latent_height, g.latent_width,
                             device=dev, dtype=s.dtype)
        self.rows = torch.zeros(s.block_tokens, device=dev, dtype=torch.long)
        self.noisy_rot = torch.zeros(s.block_tokens, cfg.head_dim // 2, device=dev, dtype=rot_dtype)
        self.sink_rot = torch.zeros(s.sink_tokens, cfg.head_dim // 2, device=dev, dtype=rot_dtype)
        self.audio_tokens: torch.Tensor | None = None  # shaped by the first block's audio
        self.audio_glob: torch.Tensor | None = None
        self._recorded: dict[tuple[int, int], _Recorded] = {}  # (step, valid ring rows) -> its graph
        # the sink call's inputs (reference latent, motion latents), shaped by record_sink, and its graph
        self.sink_ref: torch.Tensor | None = None
        self.sink_motion: torch.Tensor | None = None
        self._sink: _Recorded | None = None

    @property
    def recorded(self) -> list[tuple[int, int]]:
        """(step, valid ring rows) of every recorded graph."""
        return sorted(key for key, r in self._recorded.items() if r.graph is not None)

    @property
    def recorded_steps(self) -> list[int]:
        """The steps whose steady-state (full-ring) call is a graph."""
        have = set(self.recorded)
        return [step for step in self.stepper.owned_steps if (step, self.stepper.ring_tokens) in have]

    @property
    def geometry(self) -> tuple[int, int, int]:
        """What the compiled kernels of a call are specialised on: block, sink and ring tokens."""
        s = self.stepper
        return s.block_tokens, s.sink_tokens, s.ring_tokens

    @property
    def ring_lengths(self) -> tuple[int, ...]:
        """The valid ring rows a call can see: a block more per block until the ring is full."""
        s = self.stepper
        return tuple(range(s.block_tokens, s.ring_tokens + 1, s.block_tokens))

    def covers(self, valid: int) -> bool:
        """Whether a call that sees ``valid`` ring rows is graphed (every call of a session, unless its
        capture failed)."""
        return valid in self.ring_lengths and not self._unrecordable(valid)

    def _unrecordable(self, valid: int) -> bool:
        return self.context is not None and (self.geometry, valid) in self.context.unrecordable

    def record_ahead(self) -> bool:
        """Record the graphs of every step the stepper holds and every ring length, before its first
        block (the sink and the text K/V must be in place: their lengths are part of the graph). The
        statics get placeholders: a zero block at the ring's first rows with the rotations of latent
        frame 0. Returns whether an eager call ran (the first recording of each ring length in the
        context is preceded by one): it wrote placeholder K/V into the rings, which the caller empties."""
        s = self.stepper
        wanted = [(step, n) for step in s.owned_steps for n in self.ring_lengths]
        if self.context is None or all(key in self._recorded or self._unrecordable(key[1]) for key in wanted):
            return False
        cfg, streaming = s.model.config, s.streaming
        silence = torch.zeros(cfg.num_audio_layers, cfg.audio_dim, streaming.video_frames_per_block)
        self._load(torch.zeros_like(self.x), s.encode_audio(silence), 0, rotation(s.noisy_rope(0), s.dtype),
                   rotation(s.sink_rope(s.ref_rope_frame(0, 0)), s.dtype))
        warmed_before = all((self.geometry, n) in self.context.warmed for n in self.ring_lengths)
        t0, reserved = time.perf_counter(), self._reserved_gb()
        for key in wanted:
            if key in self._recorded or self._unrecordable(key[1]):
                continue
            try:
                self._recorded[key] = self._record(*key)
            except RuntimeError:
                if key[1] == s.ring_tokens:
                    raise  # the steady state: the caller runs this session without graphs
                # a filling ring's call: it runs eagerly in this size's sessions, as before its graphs existed
                log.exception("the CUDA graph of denoising step %d with %d ring rows failed to record: calls with "
                              "%d ring rows run eagerly", key[0], key[1], key[1])
                self.context.unrecordable.add((self.geometry, key[1]))
        log.info("CUDA graphs of %d denoising calls (steps %s x ring rows %s) recorded in %.2f s: GPU memory "
                 "reserved %+.2f GB", len(wanted), list(s.owned_steps), list(self.ring_lengths),
                 time.perf_counter() - t0, self._reserved_gb() - reserved)
        return not warmed_before

    @property
    def sink_recorded(self) -> bool:
        """Whether the sink call is a graph (on a CUDA device) or the static-buffer path (CPU tests)."""
        return self._sink is not None

    def record_sink(self, ref: torch.Tensor, motion: torch.Tensor) -> None:
        """Record the sink call (refresh_sink) once, after an eager sink call of the same stepper (which
        compiled its kernels). Ungraphed, its refresh before clip 1 took 228-280 ms at 256x384 on an H100 and
        made the only block over the 480 ms budget in a live run (graphed: that block 339 ms). A failed
        capture leaves this size's sink calls ungraphed and the denoising graphs as they were."""
        key = (self.geometry, "sink")
        if self._sink is not None or (self.context is not None and key in self.context.unrecordable):
            return
        self.sink_ref, self.sink_motion = torch.empty_like(ref), torch.empty_like(motion)
        if self.context is None:
            self._sink = _Recorded(graph=None, out=None)
            return
        t0, reserved = time.perf_counter(), self._reserved_gb()
        try:
            graph = self._capture_sink()  # runs nothing: the statics' contents do not matter yet
        except RuntimeError:
            log.exception("the CUDA graph of the sink call failed to record: this size's sink calls run ungraphed")
            if self.context.stream is not None:
                self.context.renew()  # see GraphContext.renew
            self.context.unrecordable.add(key)
            return
        self._sink = _Recorded(graph=graph, out=None)
        log.info("CUDA graph of the sink call recorded in %.2f s: GPU memory reserved %+.2f GB",
                 time.perf_counter() - t0, self._reserved_gb() - reserved)

    def _capture_sink(self):
        if self.context.stream is None:
            return None  # the stand-in context of the CPU tests: the static-buffer path, eagerly
        from .cuda_graph import record_graph

        graph, _ = record_graph(self._sink_call, self.stepper.device, stream=self.context.stream, pool=self.context.pool)
        return graph

    def sink_recorded_for(self, ref: torch.Tensor, motion: torch.Tensor) -> bool:
        """Whether a sink call on these inputs goes through the recorded call (same shapes)."""
        return (self._sink is not None and ref.shape == self.sink_ref.shape and motion.shape == self.sink_motion.shape)

    def run_sink(self, ref: torch.Tensor, motion: torch.Tensor) -> None:
        """The sink call on ``ref``/``motion`` through the fixed-address inputs (see sink_recorded_for)."""
        self._load_sink(ref, motion)
        if self._sink.graph is None:
            self._sink_call()
        else:
            self._sink.graph.replay()

    def _load_sink(self, ref: torch.Tensor, motion: torch.Tensor) -> None:
        self.sink_ref.copy_(ref)
        self.sink_motion.copy_(motion)

    def _sink_call(self) -> None:
        self.stepper.sink_call(self.sink_ref, self.sink_motion)

    def _reserved_gb(self) -> float:
        return torch.cuda.memory_reserved(self.stepper.device) / 1e9 if self.context.stream is not None else 0.0

    def run(self, step: int, x: torch.Tensor, audio: "AudioTokens", slot: int, noisy_rot: torch.Tensor,
            sink_rot: torch.Tensor, valid: int) -> torch.Tensor:
        """The velocity of one call that sees ``valid`` ring rows (a fresh tensor, safe to keep)."""
        self._load(x, audio, slot, noisy_rot, sink_rot)
        recorded = self._recorded.get((step, valid))
        if recorded is None:
            recorded = self._recorded[step, valid] = self._record(step, valid)
        if recorded.graph is None:
            return self._call(step, valid)
        recorded.graph.replay()
        return recorded.out.clone()

    def _load(self, x, audio, slot, noisy_rot, sink_rot) -> None:
        s = self.stepper
        if self.audio_tokens is None:
            self.audio_tokens = torch.empty_like(audio.tokens)
            self.audio_glob = torch.empty_like(audio.glob)
        self.x.copy_(x)
        self.audio_tokens.copy_(audio.tokens)
        self.audio_glob.copy_(audio.glob)
        self.noisy_rot.copy_(noisy_rot)
        self.sink_rot.copy_(sink_rot)
        first = s.rings[s.owned_steps[0]].sink_capacity + slot
        torch.arange(first, first + s.block_tokens, out=self.rows)

    def _call(self, step: int, valid: int) -> torch.Tensor:
        from .stepper import AudioTokens, _InferenceAttention

        s = self.stepper
        cache = _InferenceAttention(s.rings[step], s.sink, self.noisy_rot, self.sink_rot, slot=self.rows, valid=valid)
        return s.velocity(step, self.x, AudioTokens(self.audio_tokens, self.audio_glob), cache)

    def _record(self, step: int, valid: int) -> _Recorded:
        ctx = self.context
        if ctx is None:
            return _Recorded(graph=None, out=None)
        if (self.geometry, valid) not in ctx.warmed:
            # The statics hold this block's inputs, so this call writes exactly the ring rows the replay
            # writes next: harmless. It compiles this geometry's kernels and sets up the attention of this
            # ring length before any capture (the first session of a second frame size in one engine
            # failed its capture without it: a compile).
            self._eager_call(step, valid)
            ctx.warmed.add((self.geometry, valid))
        return self._capture(step, valid)

    def _eager_call(self, step: int, valid: int) -> None:
        ctx = self.context
        if ctx.stream is None:
            self._call(step, valid)
            return
        main = torch.cuda.current_stream(self.stepper.device)
        ctx.stream.wait_stream(main)
        with torch.cuda.stream(ctx.stream):
            self._call(step, valid)
        main.wait_stream(ctx.stream)

    def _capture(self, step: int, valid: int) -> _Recorded:
        from .cuda_graph import record_graph

        ctx = self.context
        reserved = self._reserved_gb()
        try:
            graph, out = record_graph(lambda: self._call(step, valid), self.stepper.device, stream=ctx.stream,
                                      pool=ctx.pool)
        except RuntimeError:
            ctx.renew()  # the caller runs this session ungraphed; the next sessions record into a fresh pool
            raise
        log.debug("CUDA graph of denoising step %d, %d ring rows, recorded: GPU memory reserved %+.2f GB (now %.1f GB)",
                  step, valid, self._reserved_gb() - reserved, self._reserved_gb())
        return _Recorded(graph=graph, out=out)
