"""The stream's schedule follows the slots its frames were really shown in.

The server's playout shows a frame that missed its slot in the next one (a slip) and its margin
control moves the slot grid; the stream session decides from its schedule which blocks are late.
A schedule that heard of the grid's moves but not of the slips judged on-time blocks late and
skipped silent ones (684 frames in 10 minutes at 256x384 on an H100, a 41 % compute margin). These
tests drive the real server session (AvatarSession: its playout, margin control and the wiring back
to the stream) in real time with a fake generator."""

from __future__ import annotations

import time

import numpy as np

from live_avatar.core.stream import StreamConfig, StreamSession
from live_avatar.server.config import SessionConfig
from live_avatar.server.media.margin import MarginControl
from live_avatar.server.metrics import ServerMetrics
from live_avatar.server.session import AvatarSession
from tests.support.session_feed import SR, feed_in_real_time
from tests.unit.test_stream_session import FakeGenerator

FPS, S = 25, 640


class HiccupGenerator(FakeGenerator):
    """4-frame blocks (160 ms) in ``delay_s``; every ``every``-th block takes ``hiccup_s`` longer."""

    def __init__(self, delay_s: float, hiccup_s: float = 0.0, every: int = 0):
        super().__init__(block_frames=4, delay_s=delay_s)
        self.base_delay_s, self.hiccup_s, self.every = delay_s, hiccup_s, every
        self.started: list[float] = []  # when each block's generate() began

    def generate(self, block):
        self.started.append(time.monotonic())
        n = len(self.blocks)
        self.delay_s = self.base_delay_s + (self.hiccup_s if self.every and n % self.every == self.every - 1 else 0.0)
        return super().generate(block)


async def live_run(gen: FakeGenerator, program: np.ndarray, stream_config: StreamConfig) -> tuple[AvatarSession, dict]:
    """Feed ``program`` in real time (20 ms packets) to a started AvatarSession; its stats at the end."""
    stream = StreamSession(gen, config=stream_config)
    session = AvatarSession(stream, SessionConfig(playout_delay_ms=stream_config.playout_margin_s * 1000.0), ServerMetrics())
    # an eager control (10 slots a decision, not 50; a low tail that one late frame in ten does not
    # set; steps of 40 ms): seconds here do what ten minutes did live
    session.playout.margin = MarginControl(min_margin_s=0.02, window=10, quiet_slots=3, quantile=0.2, max_step_s=0.04)
    session.start()
    t0 = time.monotonic()
    stream.start(t0)
    try:
        await feed_in_real_time(session, program, t0)
        return session, session.stats()
    finally:
        await session.close("test over")


async def test_slips_do_not_make_on_time_silent_blocks_look_late():
    """A generator well within real time (60 ms for 160 ms of video) with a 70 ms hiccup every 6th
    block: each hiccup costs its block its slot (a repeat, the playout slips) and nothing more, so
    no block is skipped; the margin control moves the grid back in the silence."""
    gen = HiccupGenerator(delay_s=0.06, hiccup_s=0.07, every=6)
    config = StreamConfig(playout_margin_s=0.04, input_jitter_s=0.02, silence_skip_late_s=0.04)
    session, stats = await live_run(gen, np.zeros(int(6.0 * SR), np.float32), config)
    assert stats["stream"]["frames_skipped"] == 0, stats["stream"]  # 24-36 before the schedule followed the slots
    playout = session.playout
    assert playout.counters.frames_repeated > 0, "the hiccups made frames miss their slots"
    assert playout.margin.shifted_s < -0.1, "the control took the slips' surplus back"


async def test_a_slow_generator_still_loses_pauses_while_the_schedule_follows_the_slots(speech_16k):
    """12 % slower than real time: the playout slips behind it, so against the slots no block looks
    late; against the input the worker falls behind, and silent blocks are skipped to catch up."""
    gen = HiccupGenerator(delay_s=0.18)  # 4-frame blocks of 160 ms in 180 ms
    pause = np.zeros(int(0.8 * SR), np.float32)
    program = np.concatenate([pause, speech_16k[: int(1.6 * SR)], pause, speech_16k[int(1.6 * SR) : int(3.2 * SR)], pause])
    config = StreamConfig(playout_margin_s=0.04, input_jitter_s=0.02, silence_skip_late_s=0.04)
    t0 = time.monotonic()
    session, stats = await live_run(gen, program, config)
    # how long after its audio was all there each block began (the input is fed in real time from
    # just after t0; a block still in generate() at the close has a start and no entry in blocks)
    lag = [start - t0 - (b.first_frame + b.num_frames) * S / SR - gen.lookahead_samples / SR
           for start, b in zip(gen.started, gen.blocks, strict=False)]
    frames = program.size // S
    loud = np.sqrt(np.mean(program[: frames * S].reshape(frames, S) ** 2, axis=1)) > 0.01
    generated = np.zeros(frames, bool)
    for block in gen.blocks:
        generated[block.first_frame : block.first_frame + block.num_frames] = True
    stream = stats["stream"]
    assert stream["silent_frames_skipped"] > 0, stream
    speech_lost = (loud & ~generated[: loud.size]).sum() / loud.sum()
    assert speech_lost <= 0.1, (speech_lost, stream)
    # 20 ms lost a block, 0.66 s behind by the end if only the slots were asked (they slip along)
    assert max(lag) < 0.4, f"the worker kept near the input: {max(lag):.2f} s behind at most"
