"""``avatar generate`` with the real lite engine: frame count, audio track, lip motion, kill -9 + resume.

Renders are small (256x256, a few clips) so the module runs in about a minute on one core; most
of that is the engine's start-up (MediaPipe) in each CLI process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.speech import write_wav


def _skimage_image(name: str) -> Path:
    import skimage.data

    path = Path(skimage.data.__file__).parent / name
    if not path.is_file():
        pytest.skip(f"scikit-image sample {name} is not installed")
    return path


@pytest.fixture(scope="module")
def portrait() -> Path:
    """A real photo with one face (NASA portrait shipped with scikit-image, public domain)."""
    return _skimage_image("astronaut.png")


def run_cli(args, *, wait=True):
    cmd = [sys.executable, "-m", "live_avatar.cli.main", "generate", *map(str, args), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def decode(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def streams(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        return {
            "frames": sum(1 for p in c.demux(v) if p.size),
            "fps": float(v.average_rate),
            "size": (v.codec_context.width, v.codec_context.height),
            "audio_s": float(a.duration * a.time_base),
            "audio_codec": a.codec_context.name,
        }


def mouth_box(frame: np.ndarray) -> tuple[slice, slice]:
    from live_avatar.core.engines.lite.config import DetectionConfig
    from live_avatar.core.engines.lite.landmarks import find_face

    lips = find_face(frame, DetectionConfig()).points[[61, 291, 13, 14, 0, 17]]  # corners, inner and outer lips
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    pad = 0.25 * (x1 - x0)
    return slice(int(y0 - pad), int(y1 + pad)), slice(int(x0 - pad), int(x1 + pad))


def test_lite_render_frames_audio_and_lips(tmp_path, portrait, speech_with_silence_wav, speech_16k):
    from live_avatar.core.offline.plan import clips_for_audio

    out = tmp_path / "talk.mp4"
    res = run_cli(["--image", portrait, "--audio", speech_with_silence_wav, "--output", out,
                   "--size", "256*256", "--enable_online_decode", "--engine", "lite"])
    assert res.returncode == 0, res.stderr
    samples = len(speech_16k) + 64000  # 2 s silence + speech + 2 s silence
    clips = clips_for_audio(samples, 48)
    info = streams(out)
    assert info["frames"] == clips * 48 and f"{clips * 48} frames" in res.stdout
    assert info["fps"] == 25 and info["size"] == (256, 256)
    assert info["audio_codec"] == "aac" and info["audio_s"] == pytest.approx(samples / 16000, abs=0.05)

    frames = decode(out)
    rows, cols = mouth_box(frames[0])
    mouth = frames[:, rows, cols].astype(np.float32)
    motion = np.abs(np.diff(mouth, axis=0)).mean(axis=(1, 2, 3))  # motion[i]: frame i -> i+1
    speech_start, speech_end = 50, (32000 + len(speech_16k)) // 640  # frames
    silent = np.median(motion[5:45])
    speaking = np.median(motion[speech_start + 5 : speech_end - 5])
    assert speaking > 3 * silent + 0.5, (speaking, silent)

    # In sync: the mouth's darkness (open mouth) follows the loudness of the MP4's own audio
    # track best at lag 0 (+-1 frame).
    from tests.support.speech import read_wav_16k

    track = read_wav_16k(out)
    n = min(len(frames), len(track) // 640)
    level = np.sqrt(np.mean(track[: n * 640].reshape(n, 640) ** 2, axis=1))
    opening = -mouth[:n].mean(axis=(1, 2, 3))
    z = lambda x: (x - x.mean()) / x.std()  # noqa: E731
    o, r = z(opening), z(level)
    corr = {lag: float(np.mean(o[lag:] * r[: n - lag])) if lag >= 0 else float(np.mean(o[:lag] * r[-lag:])) for lag in range(-6, 7)}
    best = max(corr, key=corr.get)
    assert abs(best) <= 1 and corr[best] > 0.5, corr


def test_lite_kill_9_resume_has_no_seam(tmp_path, portrait, speech_16k):
    from live_avatar.core.offline.resume import RenderFiles, ResumeError, load_state
    from live_avatar.core.offline.video_writer import count_partial_frames

    # ~16 s of speech with pauses: 16 clips of 24 frames, enough to kill in the middle.
    pause = np.zeros(8000, np.float32)
    audio = write_wav(tmp_path / "long.wav", np.concatenate([speech_16k, pause] * 3), 16000)
    args = ["--image", portrait, "--audio", audio, "--size", "256*256", "--infer_frames", "24",
            "--enable_online_decode", "--seed", "3"]
    reference = tmp_path / "reference.mp4"
    assert run_cli([*args, "--output", reference]).returncode == 0

    out = tmp_path / "resumed.mp4"
    files = RenderFiles(out)
    proc = run_cli([*args, "--output", out], wait=False)
    done = 0
    deadline = time.monotonic() + 120
    while done < 3:
        assert proc.poll() is None, "the render finished before it could be killed"
        assert time.monotonic() < deadline
        if files.state.exists():
            try:
                done = load_state(files.state).clips_done
            except ResumeError:
                pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    done = load_state(files.state).clips_done
    assert count_partial_frames(files.partial) >= done * 24  # the finished clips play

    res = run_cli([*args, "--output", out, "--resume"])
    assert res.returncode == 0, res.stderr
    assert f"resuming after clip {done}" in res.stdout
    assert not files.state.exists() and not files.partial.exists()

    got, want = decode(out), decode(reference)
    assert got.shape == want.shape  # as long as an uninterrupted render
    assert streams(out)["audio_s"] == pytest.approx(streams(reference)["audio_s"], abs=0.03)
    seam = done * 24
    steps = np.abs(np.diff(got.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # steps[i]: i -> i+1
    ordinary = np.delete(steps, seam - 1)
    assert steps[seam - 1] <= ordinary.max(), (steps[seam - 1], ordinary.max())
    # The motion state was restored: the resumed video is the uninterrupted one.
    assert np.abs(got.astype(np.int16) - want.astype(np.int16)).mean() < 1.0


def test_lite_photo_without_face_is_refused(tmp_path):
    out = tmp_path / "cup.mp4"
    wav = write_wav(tmp_path / "tone.wav", 0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220).astype(np.float32), 16000)
    res = run_cli(["--image", _skimage_image("coffee.png"), "--audio", wav, "--output", out, "--size", "256*256"])
    assert res.returncode == 2
    assert "face" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.wav"]
