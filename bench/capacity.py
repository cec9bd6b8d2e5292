"""``avatar bench capacity``: how many live sessions the server admits, and whether each of them
then really holds 25 fps.

A real server process (``avatar serve``, lite engine, capacity admission on; ``max_sessions`` and
the per-client limit raised to 16 so that only the measured capacity decides) and, in a second
process at the lowest CPU priority (``nice 19``: the peers' decoding must not be what limits the
server), aiortc peers that each send espeak speech with pauses, looped, as their microphone.

1. Ramp: a peer connects, the next one ``--settle`` seconds later (the server judges a session by
   its measured cost after a few seconds), until an offer is refused (503).
2. Hold: all admitted sessions stream for ``--hold`` seconds (60). For each session: frames sent,
   repeated and dropped over the hold (the server's counters, read at its start and end), the fps
   that implies, and the fps its peer received (decoded frames).
3. One more offer after the hold: the answer (503 expected while the admitted sessions run).

Results: bench/results/capacity.json (``--output``). Targets: every session >= 24 fps with <= 1 %
of its frames repeated or dropped; the next offer gets 503.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "capacity.json"
MIN_FPS = 24.0
MAX_LATE_FRACTION = 0.01

SERVER_YAML = """\
sessions:
  max_sessions: 16
limits:
  max_sessions_per_client: 16
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hold", type=float, default=60.0, help="seconds all admitted sessions stream together (default 60)")
    p.add_argument("--settle", type=float, default=8.0, help="seconds between opening one session and the next (default 8)")
    p.add_argument("--max-peers", type=int, default=12, help="stop the ramp here even if the server admits more")
    p.add_argument("--engine", default="lite")
    p.add_argument("--note", default=None, help="a note stored with the results (e.g. 'machine shared with other jobs')")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)  # internal: the low-priority peer process


# ------------------------------------------------------------------------------------- peers (child)


def looped_speech_48k(seconds: float) -> np.ndarray:
    """espeak sentences with 1-1.5 s pauses, repeated to ``seconds``, 48 kHz mono float32."""
    import soxr

    from bench.e2e import E2EConfig, build_speech_program

    program = build_speech_program(E2EConfig(duration_s=40.0), Path(tempfile.gettempdir()))
    one = soxr.resample(program.samples, program.rate, 48000).astype(np.float32)
    reps = int(np.ceil(seconds * 48000 / one.size))
    return np.tile(one, reps)[: int(seconds * 48000)]


async def _stats(url: str) -> dict | None:
    from tests.support.server_process import http_json

    status, body = await asyncio.to_thread(http_json, "GET", url, None, 5.0)
    return body if status == 200 and isinstance(body, dict) else None


async def _peer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from tests.support.loopback_peer import LoopbackPeer

    url, hold, settle = spec["url"], spec["hold"], spec["settle"]
    samples = looped_speech_48k(spec["max_peers"] * settle + hold + 30)
    peers: list[tuple[LoopbackPeer, str]] = []
    ramp: list[dict[str, Any]] = []
    refused: dict[str, Any] | None = None
    try:
        while len(peers) < spec["max_peers"]:
            peer = LoopbackPeer(samples, frame_format=None, max_frames=int((spec["max_peers"] * settle + hold + 60) * 25),
                                layout="browser")
            before = ((await _stats(f"{url}/healthz")) or {}).get("capacity")  # what the admission sees
            t = time.monotonic()
            try:
                session_id = await peer.connect_offer(url)
            except RuntimeError as exc:
                await peer.close()
                refused = {"after_sessions": len(peers), "answer": str(exc), "capacity_before": before}
                print(f"offer {len(peers) + 1}: refused ({exc})", flush=True)
                break
            peers.append((peer, session_id))
            ramp.append({"session": session_id, "opened_at_s": round(t - spec["t0"], 2), "capacity_before": before})
            print(f"offer {len(peers)}: admitted ({session_id})", flush=True)
            await asyncio.sleep(settle)
        # hold
        start = {sid: await _stats(f"{url}/sessions/{sid}/stats") for _, sid in peers}
        t_start = time.monotonic()
        print(f"holding {len(peers)} sessions for {hold:.0f} s", flush=True)
        await asyncio.sleep(hold)
        t_end = time.monotonic()
        end = {sid: await _stats(f"{url}/sessions/{sid}/stats") for _, sid in peers}
        after = LoopbackPeer(samples, frame_format=None, layout="browser")
        try:
            await after.connect_offer(url)
            next_offer = {"status": 200, "answer": "admitted"}
        except RuntimeError as exc:
            next_offer = {"status": 503 if "503" in str(exc) else None, "answer": str(exc)}
        finally:
            await after.close()
        health = await _stats(f"{url}/healthz")
        sessions = [_hold_result(sid, peer, start[sid], end[sid], t_start, t_end) for peer, sid in peers]
    finally:
        for peer, _ in peers:
            await peer.close()
    return {"ramp": ramp, "ramp_refused": refused, "sessions": sessions, "next_offer_after_hold": next_offer,
            "hold_s": t_end - t_start, "server_capacity_at_end": (health or {}).get("capacity")}


def _hold_result(sid: str, peer, start: dict | None, end: dict | None, t_start: float, t_end: float) -> dict[str, Any]:
    span = t_end - t_start
    received = [f.arrival for f in peer.video_frames if t_start <= f.arrival <= t_end]
    out: dict[str, Any] = {"session": sid, "peer_fps_received": (len(received) - 1) / span if len(received) > 1 else 0.0}
    if start and end:
        d = {k: (end.get(k) or 0) - (start.get(k) or 0) for k in ("frames_sent", "frames_repeated", "frames_dropped", "slots")}
        slots = max(d["slots"], 1)
        out.update({
            "fps_sent": d["frames_sent"] / span,
            "frames_sent": d["frames_sent"],
            "frames_repeated": d["frames_repeated"],
            "frames_dropped": d["frames_dropped"],
            "slots": d["slots"],
            "repeated_or_dropped_fraction": (d["frames_repeated"] + d["frames_dropped"]) / slots,
            "behind_at_end": ((end.get("capacity") or {}).get("behind")),
            "speech_to_lips_p50_ms": (end.get("speech_to_lips_latency_ms") or {}).get("p50"),
        })
    return out


# ------------------------------------------------------------------------------------- orchestration


def run(args: argparse.Namespace) -> int:
    if args.peer_worker:
        spec = json.loads(Path(args.peer_worker).read_text())
        result = asyncio.run(_peer_worker(spec))
        Path(spec["result"]).write_text(json.dumps(result))
        return 0
    from tests.support.server_process import ServerProcess

    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        tmp_path = Path(tmp)
        config = tmp_path / "server.yaml"
        config.write_text(SERVER_YAML)
        env = {**os.environ, "AVATAR_CAPACITY_ADMISSION": "on"}
        server = ServerProcess(["--engine", args.engine, "--config", str(config)], tmp_path / "server.log", env=env)
        print(f"starting the server ({args.engine}); log: {server.log_path}", flush=True)
        server.start()
        try:
            spec = {"url": server.url, "hold": args.hold, "settle": args.settle, "max_peers": args.max_peers,
                    "t0": time.monotonic(), "result": str(tmp_path / "peers.json")}
            (tmp_path / "spec.json").write_text(json.dumps(spec))
            cmd = [sys.executable, "-m", "bench.capacity", "--peer-worker", str(tmp_path / "spec.json")]
            budget = args.max_peers * args.settle + args.hold + 180
            # the peers run at the lowest priority: their decoding must not be what limits the server
            worker = subprocess.run(cmd, cwd=REPO_ROOT, timeout=budget, preexec_fn=lambda: os.nice(19), check=False)
            if worker.returncode != 0 or not Path(spec["result"]).exists():
                print(f"error: the peer process failed ({worker.returncode})\n{server.log_tail()}", file=sys.stderr)
                return 1
            peers = json.loads(Path(spec["result"]).read_text())
        finally:
            server.stop()
    sessions = peers["sessions"]
    worst_fps = min((s.get("fps_sent", 0.0) for s in sessions), default=None)
    worst_late = max((s.get("repeated_or_dropped_fraction", 1.0) for s in sessions), default=None)
    result = {
        "benchmark": "capacity",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"hold_s": args.hold, "settle_s": args.settle, "max_peers": args.max_peers, "engine": args.engine,
                   "peers": "one process at nice 19, espeak speech with pauses, looped"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()),
                    "note": args.note},
        "sessions_admitted": len(sessions),
        **peers,
        "summary": {"sessions": len(sessions), "slowest_fps_sent": worst_fps,
                    "worst_repeated_or_dropped_fraction": worst_late,
                    "next_offer_status": peers["next_offer_after_hold"]["status"]},
        "targets": {
            "every_session_fps": {"value": worst_fps, "target": f">= {MIN_FPS}",
                                  "met": None if worst_fps is None else worst_fps >= MIN_FPS},
            "repeated_or_dropped": {"value": worst_late, "target": f"<= {MAX_LATE_FRACTION:.0%}",
                                    "met": None if worst_late is None else worst_late <= MAX_LATE_FRACTION},
            "next_offer_refused": {"value": peers["next_offer_after_hold"]["status"], "target": "503",
                                   "met": peers["next_offer_after_hold"]["status"] == 503},
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}: {len(sessions)} sessions admitted")
    for s in sessions:
        print(f"  {s['session']}: {s.get('fps_sent', 0):.2f} fps sent, {s.get('frames_repeated')} repeated, "
              f"{s.get('frames_dropped')} dropped, peer received {s['peer_fps_received']:.2f} fps")
    for name, c in result["targets"].items():
        print(f"  {name:22s} {c['value']!s:>8}  target {c['target']}: {'met' if c['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":  # python -m bench.capacity (same as `avatar bench capacity`)
    _parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
