"""Start-up warm-up of the liveavatar engine, and the count of graph compilations after it.

A compiled DiT (``torch.compile``) builds its graphs on first use: one per block, half and call kind
(sink prefill, denoising step), and autotunes kernels for each shape. Left to the first session, that
is 17-25 s (up to ~70 s cold) of a user looking at nothing, and a session closed meanwhile keeps the
engine busy. So the server runs one throwaway session of the engine's own size before it says ready:
prefill, the blocks of a whole clip, the clip-boundary sink refresh and one block after it, which is
every call kind a live session makes. Then it runs the session again, until one compiles nothing (at
most ``MAX_WARMUP_SESSIONS``): the compiled VAE decoder on a GPU compiled 15 more graphs in a second
session (its graph breaks leave nested frames that a fresh session reaches with new cache shapes; seen
with the tiny and the 14B models on an H200, not on the CPU). Afterwards no session should compile
anything; the dynamo counters tell whether one did (``compiles_since_ready`` in the session stats, and
a test). Then one more warmed session of ``TIMED_BLOCKS`` blocks is timed: what a block costs on this
device, against its real-time budget, logged as a warning when the margin is under 10 % (the benchmark
measured 455 ms a block at 320x512 on one lent H200; the same code ran 526 ms a block live on another).
Last, with ``reuse_sessions`` and a capacity over 1, a stepper per session slot is prepared (its KV
rings allocated, its CUDA graphs recorded): recording holds the compute lock, so a second session
starting next to a live one would otherwise stall the live one's blocks while it records 16 graphs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from live_avatar.core.contract import LOW_COMPUTE_MARGIN, AudioBlock

if TYPE_CHECKING:
    from .engine import LiveAvatarEngine

logger = logging.getLogger(__name__)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (0 without torch.compile)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return 0
    return int(counters["stats"].get("unique_graphs", 0))


MAX_WARMUP_SESSIONS = 3
# Blocks of the timed session after the warm-up (the first, with its prefill, is not counted): how
# fast this device is should be learnt at start-up, not from a viewer (see the module docstring).
TIMED_BLOCKS = 8


@dataclass
class WarmupReport:
    size: tuple[int, int]
    blocks: int  # per session
    seconds: float
    first_block_s: float
    steady_block_s: float
    graphs_compiled: int
    sessions: int = 1
    graphs_in_last_session: int = 0  # 0 unless all MAX_WARMUP_SESSIONS sessions compiled something
    session_states_ready: int = 0  # reuse_sessions: steppers kept for the next sessions, graphs recorded
    # a compiled, warmed session timed after the warm-up: what a block costs on this device now
    measured_block_s: float | None = None
    budget_s: float | None = None  # a block's real-time budget (its frames / fps)

    @property
    def margin(self) -> float | None:
        """1 - measured / budget: below LOW_COMPUTE_MARGIN a live session falls behind on any hiccup."""
        if not self.measured_block_s or not self.budget_s:
            return None
        return 1.0 - self.measured_block_s / self.budget_s

    def describe(self) -> str:
        w, h = self.size
        text = (f"warm-up {w}x{h}: {self.sessions} session(s) of {self.blocks} blocks in {self.seconds:.1f} s "
                f"(first block {self.first_block_s:.1f} s, then {self.steady_block_s * 1000:.0f} ms a block), "
                f"{self.graphs_compiled} graphs compiled")
        if self.graphs_in_last_session:
            text += f"; the last warm-up session still compiled {self.graphs_in_last_session}: sessions may stall"
        if self.session_states_ready:
            text += f"; {self.session_states_ready} session state(s) ready"
        if self.margin is not None:
            text += (f"; a block costs {self.measured_block_s * 1000:.0f} ms on this device against its "
                     f"{self.budget_s * 1000:.0f} ms budget (margin {self.margin:+.0%})")
            if self.margin < 0:
                text += ": slower than real time, live sessions will skip frames (a smaller --size is faster)"
            elif self.margin < LOW_COMPUTE_MARGIN:
                text += f": below {LOW_COMPUTE_MARGIN:.0%}, live sessions may fall behind on any hiccup"
        return text

    @property
    def needs_warning(self) -> bool:
        return bool(self.graphs_in_last_session) or (self.margin is not None and self.margin < LOW_COMPUTE_MARGIN)


def warmup_audio_block(context: int, lookahead: int, first_frame: int, num_frames: int, seed: int) -> AudioBlock:
    """A block of voiced-looking audio (a harmonic tone in noise): the shapes a live block has."""
    n = context + num_frames * 640 + lookahead
    t = np.arange(n) / 16000.0
    rng = np.random.default_rng(seed)
    samples = 0.2 * np.sin(2 * np.pi * 160 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(n)
    return AudioBlock(samples=samples.astype(np.float32), first_frame=first_frame, num_frames=num_frames,
                      context=context, lookahead=lookahead, speech=np.ones(num_frames, bool))


def warm_up(engine: "LiveAvatarEngine", progress: Callable[[str], None] | None = None) -> WarmupReport:
    """Throwaway sessions at the engine's size (prefill, a clip, the sink refresh, one more block) until
    one compiles nothing."""
    from live_avatar.core.portraits import default_portrait

    say = progress or logger.info
    streaming = engine.parts.model_config.streaming
    blocks = streaming.blocks_per_clip + 1  # across the clip boundary: the sink refresh and the next clip's first call
    graphs_before = compiled_graphs()
    t0 = time.perf_counter()
    w, h = engine.size
    say(f"liveavatar warm-up at {w}x{h}: preparing the portrait (compiling and autotuning may take minutes the first time)")
    avatar = engine.prepare_avatar(default_portrait())
    first_session_times: list[float] = []
    sessions, compiled_in_session = 0, 0
    while sessions < MAX_WARMUP_SESSIONS:
        sessions += 1
        session_start = compiled_graphs()
        times = _warmup_session(engine, avatar, blocks, lambda k, s, n=sessions: say(
            f"liveavatar warm-up at {w}x{h}: session {n}, block {k + 1}/{blocks} in {s:.1f} s"))
        first_session_times = first_session_times or times
        compiled_in_session = compiled_graphs() - session_start
        if compiled_in_session == 0:  # nothing new to compile (also: an engine without torch.compile)
            break
    say(f"liveavatar warm-up at {w}x{h}: timing {TIMED_BLOCKS} blocks of a warmed session")
    timed = _warmup_session(engine, avatar, TIMED_BLOCKS, lambda k, s: None)
    report = WarmupReport(
        size=(w, h), blocks=blocks, seconds=time.perf_counter() - t0, first_block_s=first_session_times[0],
        steady_block_s=float(np.median(first_session_times[1:])) if blocks > 1 else first_session_times[0],
        graphs_compiled=compiled_graphs() - graphs_before, sessions=sessions,
        graphs_in_last_session=compiled_in_session,
        measured_block_s=float(np.median(timed[1:])),
        budget_s=streaming.video_frames_per_block / streaming.fps,
    )
    report.session_states_ready = _prepare_session_states(engine, avatar, say)
    (logger.warning if report.needs_warning else say)(report.describe())
    return report


def _prepare_session_states(engine: "LiveAvatarEngine", avatar, say: Callable[[str], None]) -> int:
    """``reuse_sessions``: a stepper for every session slot (``capacity``), prefilled once so that its
    graphs are recorded now and no session's start records any. Returns the steppers kept."""
    if not engine.reuse_sessions or engine.pipeline is not None:
        return len(engine.idle_steppers)
    missing = engine.capacity - len(engine.idle_steppers)
    if missing > 0:
        say(f"liveavatar warm-up: preparing {missing} more session state(s) (KV rings, CUDA graphs) for "
            f"{engine.capacity} sessions at once")
        generators = []
        try:
            for _ in range(engine.capacity):
                generators.append(engine.new_generator(avatar))
                generators[-1].start()
        finally:
            for generator in generators:
                generator.close()
    return len(engine.idle_steppers)


def _warmup_session(engine: "LiveAvatarEngine", avatar, blocks: int, progress: Callable[[int, float], None]) -> list[float]:
    generator = engine.new_generator(avatar)
    block_times = []
    try:
        for k in range(blocks):
            started = time.perf_counter()
            generator.generate(warmup_audio_block(generator.context_samples, generator.lookahead_samples,
                                                  k * generator.block_frames, generator.block_frames, seed=k))
            block_times.append(time.perf_counter() - started)
            progress(k, block_times[-1])
    finally:
        generator.close()
    return block_times
