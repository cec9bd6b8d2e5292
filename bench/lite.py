"""``avatar bench lite``: speed of the lite engine, and a contact sheet to look at.

Measures, at the configured size (default 512x512), with OpenCV and BLAS limited to one thread:
  * one session: frames per second of wall time and CPU-seconds per second of video;
  * N sessions at once (default 4), as separate processes (or threads), all started together:
    per-session fps, total fps and CPU-seconds per second of video.
Each figure is the median over --repeats runs. Offline rendering (no real-time pacing): a session
keeps up with real time when its fps >= 25. Results go to bench/results/lite.json together with
the machine and its load; a contact sheet of frames (speech, a blink, idle) goes next to it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SPEECH_TEXT = (
    "Hello everyone, welcome to the stream. Today we talk about real time avatars, "
    "and how a single photo can speak with your voice."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=12.0, help="seconds of video per session and run")
    p.add_argument("--sessions", type=int, default=4, help="concurrent sessions of the second measurement")
    p.add_argument("--mode", choices=["processes", "threads"], default="processes", help="how concurrent sessions run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="512*512", help="W*H")
    p.add_argument("--block-frames", type=int, default=2)
    p.add_argument("--image", default=None, help="portrait (default: the built-in astronaut)")
    p.add_argument("--output", default=str(RESULTS_DIR / "lite.json"))
    p.add_argument("--contact-sheet", default=str(RESULTS_DIR / "lite_contact_sheet.png"))
    p.add_argument("--no-contact-sheet", action="store_true")


def _limit_threads() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import cv2

    cv2.setNumThreads(1)


def bench_audio(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """1 s silence, speech (espeak-ng), silence, speech again..., cut to ``seconds``."""
    from tests.support.speech import espeak_speech

    speech = espeak_speech(SPEECH_TEXT, sample_rate)
    pieces = [np.zeros(sample_rate, np.float32)]
    while sum(len(x) for x in pieces) < seconds * sample_rate:
        pieces += [speech, np.zeros(3 * sample_rate, np.float32)]
    return np.concatenate(pieces)[: int(seconds * sample_rate)]


def _engine_config(args_dict: dict) -> dict:
    return {"size": args_dict["size"], "block_frames": args_dict["block_frames"], "capacity": 1}


def _load_image(path: str | None) -> np.ndarray:
    from live_avatar.core.portraits import default_portrait, load_portrait

    return load_portrait(path) if path else default_portrait()


def _session_worker(args_dict: dict, audio: np.ndarray, seed: int, barrier, results, pin_core: int | None = None) -> None:
    """One session: prepare (not timed), wait for the others, render all the audio (timed)."""
    _limit_threads()
    from live_avatar.core.engines.lite import LiteEngine
    from live_avatar.core.engines.lite.drive import audio_blocks

    if pin_core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {pin_core})  # pid 0: this thread only (Linux)
    engine = LiteEngine(**_engine_config(args_dict))
    generator = engine.new_generator(engine.prepare_avatar(_load_image(args_dict["image"])), seed=seed)
    blocks = list(audio_blocks(audio, generator, samples_per_frame=engine.sample_rate // engine.fps))
    if barrier is not None:
        barrier.wait()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    frames = sum(len(generator.generate(block)) for block in blocks)
    results.put({"frames": frames, "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0})


def _run_sessions(args_dict: dict, audio: np.ndarray, sessions: int, mode: str, pin_core: int | None = None) -> dict:
    if mode == "threads" or sessions == 1:
        import queue
        import threading

        results: queue.Queue = queue.Queue()
        barrier = threading.Barrier(sessions + 1)
        cpu0 = time.process_time()
        threads = [
            threading.Thread(target=_session_worker, args=(args_dict, audio, i, barrier, results, pin_core)) for i in range(sessions)
        ]
        for t in threads:
            t.start()
        barrier.wait()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - wall0
        per = [results.get() for _ in range(sessions)]
        # Threads share one process: its CPU time covers all sessions.
        cpu_total = time.process_time() - cpu0
    else:
        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        barrier = ctx.Barrier(sessions + 1)
        procs = [ctx.Process(target=_session_worker, args=(args_dict, audio, i, barrier, results)) for i in range(sessions)]
        for proc in procs:
            proc.start()
        barrier.wait()
        wall0 = time.perf_counter()
        per = [results.get(timeout=600) for _ in range(sessions)]
        wall = time.perf_counter() - wall0
        for proc in procs:
            proc.join()
        cpu_total = sum(r["cpu_s"] for r in per)
    frames = sum(r["frames"] for r in per)
    video_s = frames / 25.0
    return {
        "fps_per_busy_core": frames / cpu_total,  # what a dedicated core would sustain
        "sessions": sessions,
        "per_session_fps": [r["frames"] / r["wall_s"] for r in per],
        "min_session_fps": min(r["frames"] / r["wall_s"] for r in per),
        "total_fps": frames / wall,
        "cpu_s_per_video_s": cpu_total / video_s,
        "wall_s": wall,
    }


def _median_runs(runs: list[dict]) -> dict:
    keys = ("min_session_fps", "total_fps", "cpu_s_per_video_s", "fps_per_busy_core", "wall_s")
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["sessions"] = runs[0]["sessions"]
    out["runs"] = runs
    out["real_time"] = out["min_session_fps"] >= 25.0
    return out


def _machine() -> dict:
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cv2

    return {
        "cpu": cpu_model,
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1m_before": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def contact_sheet(args_dict: dict, path: Path, seconds: float = 14.0) -> dict:
    """4x6 tiles: two rows of consecutive speech frames (face crop), one row around a blink in
    silence, one row of whole frames over time. Returns what is in it."""
    import cv2

    from live_avatar.core.engines.lite import LiteEngine
    from live_avatar.core.engines.lite.drive import audio_blocks

    engine = LiteEngine(**_engine_config(args_dict))
    generator = engine.new_generator(engine.prepare_avatar(_load_image(args_dict["image"])), seed=3)
    audio = bench_audio(seconds)
    frames, poses = [], []
    for block in audio_blocks(audio, generator, samples_per_frame=engine.sample_rate // engine.fps):
        frames.extend(generator.generate(block))
        poses.extend(generator.last_poses)
    opening = np.array([p.mouth_open for p in poses])
    blink = np.array([p.blink_left for p in poses])
    speech = np.array([np.abs(audio[k * 640 : (k + 1) * 640]).max(initial=0) > 1e-3 for k in range(len(frames))])
    # Speech rows: the 12 consecutive frames with the most mouth movement (opening and closing).
    start = max(range(len(frames) - 12), key=lambda k: np.abs(np.diff(opening[k : k + 12])).sum())
    speech_idx = list(range(start, start + 12))
    silent_blinks = [k for k in range(1, len(frames)) if blink[k] > 0.5 and blink[k - 1] <= 0.5 and not speech[max(0, k - 10) : k + 10].any()]
    any_blinks = [k for k in range(1, len(frames)) if blink[k] > 0.5 and blink[k - 1] <= 0.5]
    b = (silent_blinks or any_blinks or [len(frames) // 2])[0]
    blink_idx = [min(len(frames) - 1, max(0, k)) for k in range(b - 2, b + 4)]
    whole_idx = [int(x) for x in np.linspace(0, len(frames) - 1, 6)]

    rig = generator.avatar.rig
    pts = rig.landmarks
    cx, cy = pts[:, 0].mean(), pts[:, 1].mean()
    half = int(rig.face_height * 0.8)
    tile = 256

    def face_tile(k: int) -> np.ndarray:
        f = frames[k]
        y0, x0 = max(0, int(cy) - half), max(0, int(cx) - half)
        crop = f[y0 : y0 + 2 * half, x0 : x0 + 2 * half]
        return cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA)

    def whole_tile(k: int) -> np.ndarray:
        h, w = frames[k].shape[:2]
        scale = tile / max(h, w)
        small = cv2.resize(frames[k], (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
        out = np.full((tile, tile, 3), 255, np.uint8)
        out[: small.shape[0], : small.shape[1]] = small
        return out

    def label(img: np.ndarray, k: int) -> np.ndarray:
        img = img.copy()
        text = f"{k / 25:.2f}s o={opening[k]:.2f} b={blink[k]:.1f}"
        cv2.putText(img, text, (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        return img

    rows = [
        [label(face_tile(k), k) for k in speech_idx[:6]],
        [label(face_tile(k), k) for k in speech_idx[6:]],
        [label(face_tile(k), k) for k in blink_idx],
        [label(whole_tile(k), k) for k in whole_idx],
    ]
    sheet = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return {"path": str(path), "speech_frames": speech_idx, "blink_frames": blink_idx, "whole_frames": whole_idx}


def run(args: argparse.Namespace) -> int:
    _limit_threads()
    args_dict = {"size": args.size, "block_frames": args.block_frames, "image": args.image}
    try:
        _load_image(args.image)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    machine = _machine()
    audio = bench_audio(args.seconds)
    result: dict = {
        "benchmark": "lite",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "config": {**args_dict, "seconds": args.seconds, "repeats": args.repeats, "mode": args.mode},
        "note": "offline rendering as fast as possible; a session is real time when its fps >= 25. "
        "The machine is shared: see load_average_1m_before.",
    }
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    single = [_run_sessions(args_dict, audio, 1, "threads", pin_core=cores[-1]) for _ in range(args.repeats)]
    result["one_session"] = _median_runs(single)
    result["one_session"]["pinned_to_core"] = cores[-1]
    print(f"1 session on one core: {result['one_session']['min_session_fps']:.1f} fps (wall), "
          f"{result['one_session']['cpu_s_per_video_s']:.3f} CPU-s per video-s "
          f"(= {result['one_session']['fps_per_busy_core']:.0f} fps per busy core)")
    if args.sessions > 1:
        multi = [_run_sessions(args_dict, audio, args.sessions, args.mode) for _ in range(args.repeats)]
        result["concurrent_sessions"] = _median_runs(multi)
        m = result["concurrent_sessions"]
        print(f"{args.sessions} sessions ({args.mode}): slowest session {m['min_session_fps']:.1f} fps, "
              f"total {m['total_fps']:.1f} fps, {m['cpu_s_per_video_s']:.3f} CPU-s per video-s")
    result["machine"]["load_average_1m_after"] = os.getloadavg()[0]
    if not args.no_contact_sheet:
        result["contact_sheet"] = contact_sheet(args_dict, Path(args.contact_sheet))
        print(f"contact sheet: {args.contact_sheet}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0
