"""Does the margin control's drift of the slot grid cost latency when the generator is behind real time?

Every live GPU run at or past its block budget moved the grid later (+0.67 to +1.85 s), every run that
kept up moved it earlier. This runs the real server session (AvatarSession: playout, production margin
control, the stream's schedule and catch-up) in real time with a fake generator ``--over`` times slower
than real time (4-frame blocks, 5 % jitter) on espeak speech with pauses, twice: with the control as
shipped, and with one that holds its later moves while the recent median block cost is over budget. It
reports each run's grid move, skipped and repeated frames and the server's speech-to-lips. With
``--recover-at S`` the generator turns fast (0.8 of the budget) after S seconds: does a grid moved later
during the deficit keep the latency up afterwards?

    python -m bench.analysis_margin_deficit --over 1.03 --seconds 150 [--recover-at 100] [--output FILE]

Without espeak-ng, set AVATAR_SPEECH_CACHE (tests/support/speech.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np

from bench.result_file import result_header, write_result
from live_avatar.core.stream import StreamConfig, StreamSession
from live_avatar.server.config import SessionConfig
from live_avatar.server.media.margin import MarginControl
from live_avatar.server.metrics import ServerMetrics
from live_avatar.server.session import AvatarSession
from tests.support.session_feed import SR, feed_in_real_time
from tests.support.speech import SPEECH_TEXT, espeak_speech, trim_silence
from tests.unit.test_stream_session import FakeGenerator

BLOCK_FRAMES, FPS = 4, 25
BLOCK_S = BLOCK_FRAMES / FPS


class JitteryGenerator(FakeGenerator):
    """``over`` x the block's real time, 5 % jitter; ``fast_after_s``: 0.8 x from then on."""

    def __init__(self, over: float, fast_after_s: float | None, seed: int):
        super().__init__(block_frames=BLOCK_FRAMES, delay_s=BLOCK_S * over)
        self.over, self.fast_after_s = over, fast_after_s
        self.rng = np.random.default_rng(seed)
        self.t0 = time.monotonic()

    def generate(self, block):
        recovered = self.fast_after_s is not None and time.monotonic() - self.t0 >= self.fast_after_s
        self.delay_s = BLOCK_S * (0.8 if recovered else self.over) * float(self.rng.normal(1.0, 0.05))
        return super().generate(block)


class HoldingLaterMoves(MarginControl):
    """The variant tried in bf29251 (reverted): no later move while ``behind()``."""

    def __init__(self, behind, **kwargs):
        super().__init__(**kwargs)
        self.behind = behind
        self.held = 0

    def observe(self, slack_s: float, quiet: bool) -> float:
        move = super().observe(slack_s, quiet)
        if move > 0 and self.behind():
            self.shifted_s -= move
            self.adjustments -= 1
            self.held += 1
            return 0.0
        return move


def speech_program(seconds: float, seed: int) -> np.ndarray:
    speech = trim_silence(espeak_speech(SPEECH_TEXT, SR), SR) * 0.5
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * SR:
        pause = np.zeros(int(rng.uniform(0.6, 1.2) * SR), np.float32)
        parts += [pause, speech]
        total += pause.size + speech.size
    return np.concatenate(parts)[: int(seconds * SR)].astype(np.float32)


async def one_run(program: np.ndarray, over: float, recover_at: float | None, hold: bool, seed: int) -> dict:
    gen = JitteryGenerator(over, recover_at, seed)
    stream = StreamSession(gen, config=StreamConfig(playout_margin_s=0.04, input_jitter_s=0.02))
    session = AvatarSession(stream, SessionConfig(playout_delay_ms=40.0), ServerMetrics())
    shipped = session.playout.margin
    if hold:
        def behind() -> bool:
            margin = stream.stats().get("compute_margin_pct")
            return margin is not None and margin < 0

        session.playout.margin = HoldingLaterMoves(behind, min_margin_s=shipped.min_margin_s)
    session.start()
    t0 = gen.t0 = time.monotonic()
    stream.start(t0)
    try:
        await feed_in_real_time(session, program, t0)
        stats = session.stats()
        s2l_ms = [round(x * 1000.0, 1) for x in session.speech_to_lips]
    finally:
        await session.close("analysis over")
    margin = session.playout.margin
    return {
        "variant": "hold later moves while behind" if hold else "as shipped",
        "grid_moved_ms": round(margin.shifted_s * 1000.0, 1),
        "later_moves_held": getattr(margin, "held", 0),
        "frames_skipped": stats["stream"]["frames_skipped"],
        "silent_frames_skipped": stats["stream"]["silent_frames_skipped"],
        "frames_repeated": stats["frames_repeated"],
        "compute_margin_pct_at_end": stats["stream"]["compute_margin_pct"],
        "speech_to_lips_ms": {"p50": float(np.median(s2l_ms)) if s2l_ms else None,
                              "p90": float(np.percentile(s2l_ms, 90)) if s2l_ms else None, "each": s2l_ms},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.analysis_margin_deficit", description=__doc__.split("\n")[0])
    parser.add_argument("--over", type=float, default=1.03, help="block time / real time during the deficit")
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--recover-at", type=float, default=None, metavar="S")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("bench/results/analysis_margin_deficit.json"))
    args = parser.parse_args(argv)
    if args.over <= 0 or args.seconds < 20:
        parser.error("--over must be > 0 and --seconds >= 20")
    program = speech_program(args.seconds, args.seed)
    runs = []
    for hold in (False, True):
        run = asyncio.run(one_run(program, args.over, args.recover_at, hold, args.seed))
        print(json.dumps({k: v for k, v in run.items() if k != "speech_to_lips_ms"}), run["speech_to_lips_ms"]["p50"],
              flush=True)
        runs.append(run)
    write_result(args.output, {
        **result_header("analysis_margin_deficit", argv),
        "config": {"over": args.over, "seconds": args.seconds, "recover_at_s": args.recover_at, "seed": args.seed,
                   "block_frames": BLOCK_FRAMES, "jitter": 0.05},
        "runs": runs,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
