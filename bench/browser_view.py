"""``avatar bench browser-view``: what a browser adds between a video frame's arrival and the screen.

``avatar bench e2e`` measures at an aiortc peer, whose jitter buffer hands a frame to its decoder only
when the next frame's first packet arrives (it ignores the RTP marker bit): its decoded times are one
frame (~40 ms at 25 fps) after the wire. A viewer's browser, or OBS's browser source (Chromium too),
completes a frame on its last packet, then adds its own jitter-buffer delay, decode and render.
This benchmark measures that on the real part: headless Chromium (Debian's, through Playwright) opens
the client page of a real server (lite engine by default), its fake microphone looping espeak-ng
speech, and for ``--duration`` seconds records for every frame put on screen the
``requestVideoFrameCallback`` metadata (``receiveTime``: the frame's last packet; ``presentationTime``:
handed to the compositor), plus the page's ``getStats()`` counters (jitter buffer, decode,
first-packet-to-decoded processing, freezes) over the same window.

Speech-to-lips as a browser viewer sees it is then the e2e bench's wire figure (the frame's first
packet at the peer) plus this hold (after the last packet; on loopback the first and last packets of a
frame are apart by well under a millisecond, ``assembly_ms``). Headless Chromium composites in
software (no GPU, no display): a desktop browser's presentation may differ by up to a display refresh.

Results go to bench/results/browser_view.json (``--output``).
"""

from __future__ import annotations

import argparse
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

from tests.support.chromium import CHROMIUM, chromium_page, write_fake_mic
from tests.support.server_process import ServerProcess, http_json
from tests.support.speech import (
    SPEECH_TEXT,
    NoSpeechSynthesizer,
    espeak_speech,
    trim_silence,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "browser_view.json"
CONNECT_TIMEOUT_MS = 60_000
MIC_PAUSE_S = 1.0  # silence around the looped speech: every loop is a speech onset

# Installed on the page's <video> once the stream plays: one row per frame on screen.
RECORD_FRAMES_JS = """() => {
  const video = document.getElementById('video');
  const rows = [];
  window.__benchFrames = rows;
  const onFrame = (now, m) => {
    rows.push([m.receiveTime ?? null, m.presentationTime, m.expectedDisplayTime, m.presentedFrames,
               m.rtpTimestamp ?? null]);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}"""

# Cumulative inbound-rtp video counters (seconds or counts), as the page last polled them (once a second).
STATS_KEYS = ("timestamp", "framesReceived", "framesDecoded", "framesDropped", "jitterBufferDelay",
              "jitterBufferEmittedCount", "totalDecodeTime", "totalProcessingDelay", "totalAssemblyTime",
              "framesAssembledFromMultiplePackets", "freezeCount", "totalFreezesDuration")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=30.0, help="seconds of frames recorded (default 30)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of streaming before recording starts (default 3)")
    p.add_argument("--runs", type=int, default=1,
                   help="sessions one after another, each in a fresh browser profile (default 1); medians across them")
    p.add_argument("--url", default=None, help="a running server's URL instead of starting `avatar serve` (lite)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help=f"JSON results (default {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})")


def _video_stats(page) -> dict[str, float] | None:
    stats = page.evaluate("window.avatarClient.videoStats || null")
    return None if stats is None else {k: stats[k] for k in STATS_KEYS if isinstance(stats.get(k), (int, float))}


def _per_frame_ms(before: dict | None, after: dict | None, total: str, count: str) -> float | None:
    """Mean per counted frame of a cumulative seconds counter, over the window between two polls."""
    if not before or not after or total not in after or count not in after:
        return None
    n = after[count] - before.get(count, 0)
    return 1000.0 * (after[total] - before.get(total, 0.0)) / n if n > 0 else None


def summarize_frames(rows: list[list], duration_s: float) -> dict[str, Any]:
    """The recorded frames: on-screen rate, frames the compositor skipped, and the hold from each
    frame's last packet to its presentation."""
    rows = [r for r in rows if r[1] is not None]
    out: dict[str, Any] = {"frames_presented": len(rows), "duration_s": duration_s}
    if len(rows) < 2:
        return out
    present = np.asarray([r[1] for r in rows], np.float64)
    counters = np.asarray([r[3] for r in rows], np.int64)
    span_s = (present[-1] - present[0]) / 1000.0
    out["fps_presented"] = (len(rows) - 1) / span_s if span_s > 0 else None
    # presentedFrames counts every frame the compositor showed; a gap larger than 1 between two
    # callbacks is a frame shown without a callback (the page's main thread was late)
    out["frames_without_callback"] = int(np.sum(np.maximum(np.diff(counters) - 1, 0)))
    gaps = np.diff(present)
    out["present_gap_ms"] = {"p50": float(np.median(gaps)), "p95": float(np.percentile(gaps, 95)),
                             "max": float(gaps.max())}
    held = np.asarray([r[1] - r[0] for r in rows if r[0] is not None], np.float64)
    out["frames_with_receive_time"] = int(held.size)
    if held.size:
        out["receive_to_present_ms"] = {"p50": float(np.median(held)), "p95": float(np.percentile(held, 95)),
                                        "max": float(held.max()), "min": float(held.min())}
    return out


def _wait_session_gone(url: str, session_id: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while http_json("GET", f"{url}/sessions/{session_id}/stats")[0] != 404:
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {session_id} still open {timeout_s:g} s after Disconnect")
        time.sleep(0.2)


def chromium_version() -> str | None:
    try:
        return subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def fake_mic(workdir: Path) -> Path:
    """espeak-ng speech between pauses, at a close-mic level (peak -6 dBFS): the WAV Chromium loops as its mic."""
    speech = trim_silence(espeak_speech(SPEECH_TEXT), 16000)
    return write_fake_mic(workdir / "mic_48k.wav", speech * (0.5 / float(np.max(np.abs(speech)))), MIC_PAUSE_S)


def measure(url: str, workdir: Path, mic: Path, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """One session in a fresh Chromium profile under ``workdir``: ``duration_s`` of frames after ``warmup_s``."""
    with chromium_page(workdir / "chromium-profile", mic) as page:
        page.goto(url + "/")
        page.click("#connect")
        try:
            page.wait_for_function("() => window.avatarClient.connected && window.avatarClient.framesPresented > 0",
                                   timeout=CONNECT_TIMEOUT_MS)
        except Exception as exc:  # Playwright's TimeoutError: say what the page said
            state = page.evaluate("() => [document.getElementById('state').textContent, "
                                  "document.getElementById('error').textContent]")
            raise RuntimeError(f"the page did not stream within {CONNECT_TIMEOUT_MS / 1000:g} s ({type(exc).__name__}); "
                               f"page state {state}; console: {page.console_log[-8:]}") from None
        page.wait_for_timeout(warmup_s * 1000)
        page.evaluate(RECORD_FRAMES_JS)
        before = _video_stats(page)
        page.wait_for_timeout(duration_s * 1000)
        after = _video_stats(page)
        rows = page.evaluate("window.__benchFrames")
        session_id = page.evaluate("window.avatarClient.sessionId")
        status, server = http_json("GET", f"{url}/sessions/{session_id}/stats")
        console = page.console_log[-10:]
        # end the session as a user would (Disconnect), so the next run finds the server free
        page.click("#disconnect")
        _wait_session_gone(url, session_id)
    frames = summarize_frames(rows, duration_s)
    counted = {"jitter_buffer_ms": ("jitterBufferDelay", "jitterBufferEmittedCount"),
               "decode_ms": ("totalDecodeTime", "framesDecoded"),
               # first packet received -> decoded (the spec's totalProcessingDelay)
               "processing_ms": ("totalProcessingDelay", "framesDecoded"),
               "assembly_ms": ("totalAssemblyTime", "framesAssembledFromMultiplePackets")}
    webrtc = {name: _per_frame_ms(before, after, *keys) for name, keys in counted.items()}
    if before and after:
        webrtc["frames_decoded"] = after.get("framesDecoded", 0) - before.get("framesDecoded", 0)
        webrtc["frames_dropped"] = after.get("framesDropped", 0) - before.get("framesDropped", 0)
        webrtc["freezes"] = after.get("freezeCount", 0) - before.get("freezeCount", 0)
        webrtc["window_s"] = (after["timestamp"] - before["timestamp"]) / 1000.0
    s2l = server.get("speech_to_lips_latency_ms") if status == 200 else None
    return {"frames": frames, "webrtc_stats": webrtc,
            "server": {"speech_to_lips_ms": s2l, "fps": server.get("fps") if status == 200 else None,
                       "first_frame_latency_ms": server.get("first_frame_latency_ms") if status == 200 else None,
                       # the slot grid's moves (server/media/margin.py), kept to tell whether they reach the
                       # browser's jitter buffer (not as far as measured: results/browser_view_margin_ab.json)
                       "playout_margin": server.get("playout_margin") if status == 200 else None},
            "console_tail": console}


def run(args: argparse.Namespace) -> int:
    if args.duration < 2 or args.warmup < 0 or args.runs < 1:
        print("error: --duration must be >= 2 s, --warmup >= 0 and --runs >= 1", file=sys.stderr)
        return 2
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} is missing (apt-get install chromium; scripts/test.sh does)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        server = None
        try:
            url = args.url.rstrip("/") if args.url else None
            if url is None:
                env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                server = ServerProcess([], Path(tmp) / "server.log", start_timeout_s=120.0, env=env).start()
                url = server.url
            mic, runs = fake_mic(Path(tmp)), []
            for k in range(args.runs):
                runs.append(measure(url, Path(tmp) / f"run{k}", mic, args.duration, args.warmup))
                print(f"  run {k + 1}/{args.runs}: {_headline(runs[-1])}", flush=True)
        except (RuntimeError, NoSpeechSynthesizer) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # Playwright's timeouts and errors: say what failed, no traceback
            print(f"error: the browser did not stream: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                server.stop()
    result = {
        "benchmark": "browser_view",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "avatar bench browser-view " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["bench", "browser-view"]
        else None,
        "config": {"duration_s": args.duration, "warmup_s": args.warmup, "runs": args.runs,
                   "url": args.url or "avatar serve (lite)"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_1_5_15": list(os.getloadavg()),
                    "chromium": chromium_version()},
        "median_of_runs": medians(runs),
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    m = result["median_of_runs"]
    print(f"wrote {args.output}")
    print(f"  median of {args.runs} run(s): last packet -> presented p50 {_fmt(m['receive_to_present_p50_ms'])} ms, "
          f"p95 {_fmt(m['receive_to_present_p95_ms'])} ms; jitter buffer {_fmt(m['jitter_buffer_ms'])} ms a frame")
    return 0


def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each headline figure's median across the runs (a run without it is left out)."""
    picks = {
        "receive_to_present_p50_ms": lambda r: (r["frames"].get("receive_to_present_ms") or {}).get("p50"),
        "receive_to_present_p95_ms": lambda r: (r["frames"].get("receive_to_present_ms") or {}).get("p95"),
        "fps_presented": lambda r: r["frames"].get("fps_presented"),
        "jitter_buffer_ms": lambda r: r["webrtc_stats"].get("jitter_buffer_ms"),
        "processing_ms": lambda r: r["webrtc_stats"].get("processing_ms"),
        "decode_ms": lambda r: r["webrtc_stats"].get("decode_ms"),
    }
    out: dict[str, float | None] = {}
    for name, pick in picks.items():
        values = [v for v in map(pick, runs) if v is not None]
        out[name] = float(np.median(values)) if values else None
    return out


def _headline(run: dict[str, Any]) -> str:
    frames, rtc = run["frames"], run["webrtc_stats"]
    held = frames.get("receive_to_present_ms") or {}
    return (f"{frames['frames_presented']} frames on screen ({_fmt(frames.get('fps_presented'))} fps); last packet -> "
            f"presented p50 {_fmt(held.get('p50'))} ms, p95 {_fmt(held.get('p95'))} ms; per frame: jitter buffer "
            f"{_fmt(rtc.get('jitter_buffer_ms'))} ms, first packet -> decoded {_fmt(rtc.get('processing_ms'))} ms, "
            f"decode {_fmt(rtc.get('decode_ms'))} ms")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"
