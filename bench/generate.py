"""``avatar bench generate``: peak memory and speed of ``avatar generate`` versus video length.

Runs the real command (``avatar generate --preset long``: online decode on) once per length, each
in a fresh process, on a looped espeak-ng speech file, with the lite engine at 512x512 and clips of
48 frames (defaults: 10, 100 and 1000 clips = 19 s, 3.2 min and 32 min of video). Per run:
  * peak RSS of the process (``wait4`` rusage, i.e. the kernel's own high-water mark);
  * render wall time, frames per second and real-time factor (wall / video seconds; < 1 is
    faster than real time), taken from the command's summary line, and the same from the render's
    CPU time (the speed on an idle core: on a shared machine the wall figures mostly show the load);
  * process wall time (including start-up, audio preparation and the final remux).
Memory is flat when the longest run's peak RSS is within 5 % of the shortest run's.
Results (written after every run, so a long run that is stopped still leaves the shorter ones)
go to bench/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FLAT_TOLERANCE = 0.05
_SUMMARY = re.compile(r"wall ([\d.]+) s\s+real-time factor ([\d.]+).*?cpu ([\d.]+) s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clips", default="10,100,1000", help="comma-separated clip counts, one run each")
    p.add_argument("--size", default="512*512", help='area cap "W*H" (a square photo gives exactly this)')
    p.add_argument("--infer_frames", type=int, default=48)
    p.add_argument("--engine", default="lite")
    p.add_argument("--image", default=None, help="portrait (default: scikit-image's astronaut, square)")
    p.add_argument("--keep-video", action="store_true", help="keep the rendered MP4s (in the temp folder, printed)")
    p.add_argument("--output", default=str(RESULTS_DIR / "generate.json"))


def write_looped_speech(path: Path, seconds: float, sample_rate: int = 16000) -> Path:
    """Speech, 1.5 s pause, speech... for ``seconds``, streamed to a 16-bit WAV (no big array)."""
    import wave

    from bench.lite import SPEECH_TEXT  # the same sentence as the lite benchmark
    from tests.support.speech import espeak_speech

    speech = espeak_speech(SPEECH_TEXT, sample_rate)
    unit = np.concatenate([speech, np.zeros(int(1.5 * sample_rate), np.float32)])
    unit = (np.clip(unit, -1, 1) * 32767).astype("<i2").tobytes()
    total = int(seconds * sample_rate) * 2
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        written = 0
        while written < total:
            piece = unit[: total - written]
            w.writeframes(piece)
            written += len(piece)
    return path


def _default_image() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / "astronaut.png"


def run_one(clips: int, audio: Path, image: Path, out_dir: Path, args) -> dict:
    output = out_dir / f"generate_{clips}.mp4"
    cmd = [
        sys.executable, "-m", "live_avatar.cli.main", "generate", "--image", str(image), "--audio", str(audio),
        "--output", str(output), "--preset", "long", "--size", args.size, "--num_clip", str(clips),
        "--infer_frames", str(args.infer_frames), "--engine", args.engine, "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    # Reap it ourselves with wait4 to get this child's own peak RSS (ru_maxrss, KiB on Linux).
    stdout_chunks, stderr_chunks = [], []
    import threading

    readers = [
        threading.Thread(target=lambda: stdout_chunks.append(proc.stdout.read()), daemon=True),
        threading.Thread(target=lambda: stderr_chunks.append(proc.stderr.read()), daemon=True),
    ]
    for t in readers:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = "".join(stdout_chunks), "".join(stderr_chunks)
    if proc.returncode != 0:
        raise RuntimeError(f"avatar generate failed ({proc.returncode}):\n{stderr[-2000:]}")
    match = _SUMMARY.search(stdout)
    nan = float("nan")
    render_wall, rtf, render_cpu = (float(g) for g in match.groups()) if match else (nan, nan, nan)
    frames = clips * args.infer_frames
    size_line = next((line for line in stdout.splitlines() if line.startswith("size:")), "")
    result = {
        "clips": clips,
        "frames": frames,
        "video_s": frames / 25,
        "size": size_line.removeprefix("size:").strip(),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "render_wall_s": render_wall,
        "render_fps": round(frames / render_wall, 2) if render_wall == render_wall and render_wall > 0 else None,
        "real_time_factor": rtf,
        "render_cpu_s": render_cpu,
        # CPU-bound speed: what the render reaches on an otherwise idle core (the machine is shared).
        "render_cpu_fps": round(frames / render_cpu, 2) if render_cpu == render_cpu and render_cpu > 0 else None,
        "cpu_real_time_factor": round(render_cpu / (frames / 25), 3) if render_cpu == render_cpu else None,
        "process_wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "output_bytes": output.stat().st_size,
    }
    if not args.keep_video:
        output.unlink(missing_ok=True)
    return result


def run(args: argparse.Namespace) -> int:
    clip_counts = [int(c) for c in str(args.clips).split(",") if c.strip()]
    if not clip_counts or min(clip_counts) <= 0:
        print("error: --clips needs positive counts, e.g. 10,100,1000", file=sys.stderr)
        return 2
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng is needed for the speech file (apt-get install espeak-ng)", file=sys.stderr)
        return 2
    image = Path(args.image) if args.image else _default_image()
    out_path = Path(args.output)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "benchmark": "generate",
        "what": "avatar generate --preset long (online decode): peak RSS and real-time factor vs. length",
        "engine": args.engine,
        "size_cap": args.size,
        "infer_frames": args.infer_frames,
        "image": image.name,
        "audio": "espeak-ng speech looped with 1.5 s pauses, 16 kHz mono WAV",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
        },
        "command": "avatar bench generate " + " ".join(sys.argv[3:]),
        "runs": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    try:
        audio = write_looped_speech(tmp / "speech_long.wav", max(clip_counts) * args.infer_frames / 25 + 0.5)
        for clips in clip_counts:
            print(f"generate: {clips} clips ...", file=sys.stderr, flush=True)
            run_result = run_one(clips, audio, image, tmp, args)
            results["runs"].append(run_result)
            print(json.dumps(run_result), flush=True)
            peaks = [r["peak_rss_mb"] for r in results["runs"]]
            shortest = results["runs"][0]["peak_rss_mb"]
            results["peak_rss_growth"] = round(max(peaks) / shortest - 1, 4)
            results["memory_flat_within_5pct"] = bool(max(peaks) <= shortest * (1 + FLAT_TOLERANCE))
            results["machine"]["load_avg_at_end"] = os.getloadavg()
            out_path.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.keep_video:
            print(f"videos kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {out_path}: peak RSS growth {results['peak_rss_growth'] * 100:.1f} % "
          f"({'flat' if results['memory_flat_within_5pct'] else 'NOT flat'})")
    return 0
