"""How much ``avatar bench e2e``'s periodic peer analysis delays the peer's event loop: in a thread (the
code before 2026-12-05) against in a forked child (bench/forked.py).

A peer that has received ``--seconds`` of a run (video frame and audio frame records, 48x48 thumbnails,
wire arrivals; synthetic, but of the real run's sizes and the real speech program) is analysed once as the
progress task does, while a 5 ms ticker on the loop (a PauseWatch, live_avatar/server/pause_watch.py)
records how late it wakes. Real runs suffer more than
this ticker shows: the receiving loop does a socket call per packet and waits for the GIL after each.

    python -m bench.analysis_loop_lag --seconds 600 [--output bench/results/analysis_loop_lag.json]

Without espeak-ng, set AVATAR_SPEECH_CACHE (tests/support/speech.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench import e2e
from bench.forked import run_forked
from bench.result_file import result_header, write_result
from live_avatar.server.pause_watch import PauseWatch


def synthetic_peer(program: e2e.SpeechProgram, seconds: float, delay_s: float = 0.9) -> SimpleNamespace:
    """What the bench's peer holds after ``seconds``: its speech answered ``delay_s`` later, 25 fps."""
    from tests.support.loopback_peer import ReceivedAudio, ReceivedVideoFrame

    rng = np.random.default_rng(0)
    t0 = time.monotonic()
    at_48k = np.repeat(program.samples, 3).astype(np.float32)
    wire: dict[str, dict[int, float]] = {"audio": {}, "video": {}}
    video, thumbs, audio = [], [], []
    for i in range(int(seconds * 25)):
        video.append(ReceivedVideoFrame(t0 + delay_s + i * 0.04, i * 3600, None))
        thumbs.append(rng.integers(0, 255, 48 * 48, dtype=np.uint8))
        wire["video"][i * 3600] = t0 + delay_s + i * 0.04 - 0.01
    for i in range(int(seconds * 50)):
        audio.append(ReceivedAudio(t0 + delay_s + i * 0.02, i * 960, at_48k[i * 960:(i + 1) * 960].copy()))
        wire["audio"][i * 960] = t0 + delay_s + i * 0.02 - 0.005
    return SimpleNamespace(video_frames=video, video_thumbs=thumbs, audio_frames=audio, video_size=(256, 384),
                           mic=SimpleNamespace(started_at=t0), wire_arrival=wire)


async def loop_lag_during(analysis, tick_s: float = 0.005) -> dict:
    """Runs ``analysis()`` (a coroutine function) under a PauseWatch that records every wake of its
    ``tick_s`` ticker (threshold 0): how late the loop woke while the analysis ran."""
    watch = PauseWatch(interval_s=tick_s, threshold_s=0.0, kept=1_000_000)
    watch.start()
    try:
        await asyncio.sleep(0.3)
        start = time.monotonic()
        result = await analysis()
        took = time.monotonic() - start
    finally:
        await watch.stop()
    ms = np.asarray([p.ms for p in watch.since(start) if p.kind == "loop"] or [0.0])
    return {"analysis_s": round(took, 3), "loop_lag_max_ms": round(float(ms.max()), 1),
            "loop_lag_p99_ms": round(float(np.percentile(ms, 99)), 1), "wakes_over_50ms": int((ms > 50).sum()),
            "analysis_ok": "error" not in result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.analysis_loop_lag", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600.0, help="how much of a run the peer has received")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    if args.seconds < 30 or args.repeats < 1:
        print("error: --seconds must be >= 30 and --repeats >= 1", file=sys.stderr)
        return 2
    cfg = e2e.E2EConfig(duration_s=args.seconds)
    with tempfile.TemporaryDirectory() as work:
        program = e2e.build_speech_program(cfg, Path(work))
    peer = synthetic_peer(program, args.seconds)

    def analyse() -> dict:
        return e2e.peer_so_far(e2e.peer_snapshot(peer), program, cfg, args.seconds)

    runs: dict[str, list[dict]] = {"thread": [], "forked": []}
    for _ in range(args.repeats):
        runs["thread"].append(asyncio.run(loop_lag_during(lambda: asyncio.to_thread(analyse))))
        runs["forked"].append(asyncio.run(loop_lag_during(lambda: run_forked(analyse))))
    medians = {mode: {key: float(np.median([r[key] for r in rs])) for key in ("analysis_s", "loop_lag_max_ms")}
               for mode, rs in runs.items()}
    out = {**result_header("analysis_loop_lag", argv), "seconds_received": args.seconds, "runs": runs, "medians": medians}
    for mode, m in medians.items():
        print(f"{mode:7s} analysis {m['analysis_s']:.2f} s   loop woke late by up to {m['loop_lag_max_ms']:.1f} ms "
              f"(median of {args.repeats})")
    if args.output:
        write_result(args.output, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
