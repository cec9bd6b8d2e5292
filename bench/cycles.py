"""``avatar bench cycles``: connect, stream, disconnect, many times; nothing may pile up in the server.

A real server process (``avatar serve``, lite engine by default) and one aiortc peer at a time
(tests/support/loopback_peer.py). Each cycle opens a session through POST /offer, waits until
video frames arrive, then ends it — alternately by DELETE /sessions/{id} and by the peer just
closing its connection (a vanished client), as real clients do. After each cycle the server's RSS,
thread count and open file descriptors are sampled (psutil) once its session count is back to 0.

Growth is measured from the end of the warm-up (``--warmup`` cycles: allocators, codec and
MediaPipe caches settle) to the last cycle. Results go to bench/results/cycles.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.server_process import ServerProcess, http_json

DESCRIPTION = __doc__
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class CycleSample:
    cycle: int
    rss_mb: float
    threads: int
    fds: int
    seconds: float
    frames: int


@dataclass
class CycleTargets:
    max_rss_growth_mb: float = 10.0
    max_thread_growth: int = 0
    max_fd_growth: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cycles", type=int, default=200, help="connect/disconnect cycles (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="cycles before the baseline sample (default 20)")
    p.add_argument("--stream-s", type=float, default=1.0, help="seconds each session streams after its first frame")
    p.add_argument("--engine", default="lite")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "cycles.json")


def process_usage(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, threads, open file descriptors) of a process."""
    import psutil

    proc = psutil.Process(pid)
    with proc.oneshot():
        return proc.memory_info().rss / 2**20, proc.num_threads(), proc.num_fds()


async def wait_for_no_sessions(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, health = await asyncio.to_thread(http_json, "GET", f"{url}/healthz")
        if status == 200 and health["sessions"] == 0:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the server still reports live sessions {timeout_s} s after the peer left")


async def one_cycle(url: str, speech_48k: np.ndarray, index: int, stream_s: float) -> int:
    """One session: connect, receive frames for ``stream_s`` s, leave (DELETE or vanish); frames seen."""
    from tests.support.loopback_peer import LoopbackPeer

    peer = LoopbackPeer(speech_48k)
    try:
        await peer.connect_offer(url)
        deadline = time.monotonic() + 20.0
        while not peer.video_frames:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cycle {index}: no video frame within 20 s")
            await asyncio.sleep(0.02)
        await asyncio.sleep(stream_s)
        if index % 2 == 0:
            await peer.delete_session()
        frames = len(peer.video_frames)
    finally:
        await peer.close()
    return frames


async def run_cycles(url: str, pid: int, cycles: int, warmup: int, stream_s: float,
                     progress: bool = False, settle_s: float = 1.0) -> list[CycleSample]:
    """Run the cycles against a started server; one sample after each cycle, ``settle_s`` after it
    has no session (the server collects a closed connection's garbage 0.5 s after closing it)."""
    from tests.support.speech import espeak_speech

    speech = espeak_speech("Hello, this is one more short session.", 48000)
    samples = []
    for i in range(cycles):
        t0 = time.monotonic()
        frames = await one_cycle(url, speech, i, stream_s)
        await wait_for_no_sessions(url)
        await asyncio.sleep(settle_s)
        rss, threads, fds = process_usage(pid)
        samples.append(CycleSample(i + 1, rss, threads, fds, time.monotonic() - t0, frames))
        if progress and (i + 1) % 10 == 0:
            print(f"  cycle {i + 1}/{cycles}: rss {rss:.1f} MB, threads {threads}, fds {fds}", flush=True)
    return samples


def summarize(samples: list[CycleSample], warmup: int, targets: CycleTargets | None = None) -> dict[str, Any]:
    targets = targets if targets is not None else CycleTargets()
    base = samples[min(warmup, len(samples)) - 1]
    end = samples[-1]
    after = samples[warmup - 1:]
    growth = {
        "rss_mb": end.rss_mb - base.rss_mb,
        "threads": end.threads - base.threads,
        "fds": end.fds - base.fds,
        # the highest value after warm-up: a leak that is sometimes freed still shows here
        "rss_mb_max_after_warmup": max(s.rss_mb for s in after) - base.rss_mb,
        "threads_max_after_warmup": max(s.threads for s in after) - base.threads,
        "fds_max_after_warmup": max(s.fds for s in after) - base.fds,
    }
    checks = {
        "rss_growth_mb": {"value": growth["rss_mb"], "target": f"< {targets.max_rss_growth_mb}",
                          "met": growth["rss_mb"] < targets.max_rss_growth_mb},
        "thread_growth": {"value": growth["threads"], "target": f"<= {targets.max_thread_growth}",
                          "met": growth["threads"] <= targets.max_thread_growth},
        "fd_growth": {"value": growth["fds"], "target": f"<= {targets.max_fd_growth}",
                      "met": growth["fds"] <= targets.max_fd_growth},
    }
    return {
        "baseline": asdict(base),
        "end": asdict(end),
        "growth": growth,
        "cycle_seconds_median": statistics.median(s.seconds for s in samples),
        "frames_per_cycle_median": statistics.median(s.frames for s in samples),
        "targets": checks,
    }


async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server = ServerProcess(["--engine", args.engine], workdir / "server.log")
    with server:
        idle = process_usage(server.proc.pid)
        print(f"server up (pid {server.proc.pid}): rss {idle[0]:.1f} MB, threads {idle[1]}, fds {idle[2]}", flush=True)
        samples = await run_cycles(server.url, server.proc.pid, args.cycles, args.warmup, args.stream_s, progress=True)
    return {
        "benchmark": "cycles",
        "command": "avatar bench cycles " + " ".join(sys.argv[3:]) if sys.argv[1:2] == ["bench"] else "avatar bench cycles",
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "config": {"cycles": args.cycles, "warmup": args.warmup, "stream_s": args.stream_s, "engine": args.engine,
                   "ending": "even cycles DELETE /sessions/{id}, odd cycles the peer closes without a word"},
        "idle": {"rss_mb": idle[0], "threads": idle[1], "fds": idle[2]},
        "summary": summarize(samples, args.warmup),
        "samples": [asdict(s) for s in samples],
    }


def run(args: argparse.Namespace) -> int:
    if args.warmup < 1 or args.cycles <= args.warmup:
        print("error: --cycles must be larger than --warmup (>= 1)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-cycles-") as tmp:
        result = asyncio.run(_run(args, Path(tmp)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    for name, check in result["summary"]["targets"].items():
        print(f"  {name:<16} {check['value']:>8.1f}  target {check['target']}: {'met' if check['met'] else 'NOT met'}")
    return 0 if all(c["met"] for c in result["summary"]["targets"].values()) else 1
