"""``avatar generate`` end to end on a tiny deterministic stand-in engine (fast, no face model).

The fake generator has real motion state (a drifting phase and a smoothed mouth opening driven by
the audio level, and a seeded RNG), so resume-with-restored-state is observable: a resumed render
must decode to the same frames as an uninterrupted one. The lite-engine tests live in
test_generate_lite.py.
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

from live_avatar.core.contract import AudioBlock, AvatarError

HERE = Path(__file__).resolve().parent
FPS = 25


class FakeGenerator:
    block_frames = 2
    context_samples = 320
    lookahead_samples = 320

    def __init__(self, size, seed, delay_s):
        self.width, self.height = size
        self.delay_s = delay_s
        self.phase = 0.0
        self.mouth = 0.0
        self.rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0 : self.height, 0 : self.width]
        self._xx, self._yy = xx.astype(np.float32), yy.astype(np.float32)

    def generate(self, block: AudioBlock) -> np.ndarray:
        spf = 640
        own = block.frame_samples(spf)
        frames = np.empty((block.num_frames, self.height, self.width, 3), np.uint8)
        for i in range(block.num_frames):
            level = float(np.sqrt(np.mean(own[i * spf : (i + 1) * spf] ** 2)))
            self.mouth += 0.5 * (min(1.0, level * 8) - self.mouth)
            self.phase += 0.05 + float(self.rng.uniform(0, 0.01))
            shade = 96 + 64 * np.sin(self._xx / 23.0 + self.phase) * np.cos(self._yy / 31.0)
            frame = np.repeat(shade[..., None], 3, axis=2)
            # The "mouth": a dark bar whose height follows the audio.
            h = int(2 + self.mouth * self.height * 0.25)
            cy, cx = int(self.height * 0.7), self.width // 2
            frame[cy - h // 2 : cy + h // 2 + 1, cx - self.width // 6 : cx + self.width // 6] = (40, 10, 10)
            frames[i] = np.clip(frame, 0, 255).astype(np.uint8)
        if self.delay_s:
            time.sleep(self.delay_s)
        return frames

    def reset_motion_to_idle(self):
        self.mouth = 0.0

    def state_dict(self):
        if os.environ.get("FAKE_ENGINE_NO_STATE"):
            raise NotImplementedError("this fake engine keeps its state on a GPU")
        return {"phase": self.phase, "mouth": self.mouth, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.phase, self.mouth = state["phase"], state["mouth"]
        self.rng.bit_generator.state = state["rng"]

    def close(self):
        pass


class FakeEngine:
    name = "fake"
    fps = FPS
    sample_rate = 16000
    block_frames = 2
    capacity = 1

    def __init__(self, size=(256, 256), seed=0):
        self.size = tuple(size)
        self.seed = seed
        self.delay_s = float(os.environ.get("FAKE_ENGINE_DELAY_S", "0"))

    def prepare_avatar(self, image):
        if image.std() < 1.0:
            raise AvatarError("no face found in the image (it is a flat colour)")
        return image

    def new_generator(self, avatar, prompt=None, **options):
        return FakeGenerator(self.size, self.seed, self.delay_s)

    def close(self):
        pass


# -- helpers ---------------------------------------------------------------------------------

CLI = (
    "import sys; sys.path.insert(0, {here!r}); import live_avatar.core.engines as e; "
    "e.ENGINES['lite'] = 'test_generate_fake_engine:FakeEngine'; "
    "from live_avatar.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def run_cli(args, *, env=None, wait=True, cwd=None):
    cmd = [sys.executable, "-c", CLI.format(here=str(HERE)), "generate", *map(str, args)]
    full_env = dict(os.environ, **(env or {}))
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=240, cwd=cwd)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd)


def decode_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def probe(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.demux(v) if _.size)
        return {
            "frames": frames,
            "fps": float(v.average_rate),
            "size": (v.codec_context.width, v.codec_context.height),
            "audio_s": float(a.duration * a.time_base),
            "audio_codec": a.codec_context.name,
        }


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    import cv2

    rng = np.random.default_rng(1)
    img = (rng.uniform(0, 255, (300, 400, 3))).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "photo.png"
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture(scope="module")
def speech_wav(speech_with_silence_wav) -> Path:
    return speech_with_silence_wav


BASE = ["--size", "256*192", "--infer_frames", "24", "--quiet"]


# -- tests -----------------------------------------------------------------------------------


def test_render_matches_the_plan(tmp_path, photo, speech_wav, speech_16k):
    out = tmp_path / "out.mp4"
    res = run_cli(["--image", photo, "--audio", speech_wav, "--output", out, "--enable_online_decode", *BASE])
    assert res.returncode == 0, res.stderr
    seconds = (len(speech_16k) + 64000) / 16000
    assert "size: 256*192" in res.stdout and "plan:" in res.stdout
    info = probe(out)
    from live_avatar.core.offline.plan import clips_for_audio

    clips = clips_for_audio(len(speech_16k) + 64000, 24)
    assert info["frames"] == clips * 24 and info["fps"] == 25 and info["size"] == (256, 192)
    assert info["audio_codec"] == "aac" and abs(info["audio_s"] - seconds) < 0.05
    assert f"{clips} clip(s)" in res.stdout and "done:" in res.stdout and "real-time factor" in res.stdout
    # Only the MP4 is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_kept_frames_mode_gives_the_same_video(tmp_path, photo, speech_wav):
    online, kept = tmp_path / "online.mp4", tmp_path / "kept.mp4"
    args = ["--image", photo, "--audio", speech_wav, "--num_clip", "3", *BASE]
    assert run_cli([*args, "--output", online, "--enable_online_decode"]).returncode == 0
    assert run_cli([*args, "--output", kept, "--no-enable_online_decode"]).returncode == 0
    a, b = decode_frames(online), decode_frames(kept)
    assert a.shape == b.shape == (72, 192, 256, 3)
    assert np.array_equal(a, b)


def _wait_for_clips(files, clips: int, proc, timeout=120.0) -> int:
    from live_avatar.core.offline.resume import ResumeError, load_state

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if files.state.exists():
            try:
                done = load_state(files.state).clips_done
            except ResumeError:  # caught mid-rename: try again
                done = 0
            if done >= clips:
                return done
        time.sleep(0.02)
    raise AssertionError("the render did not progress")


def test_kill_9_then_resume_equals_uninterrupted(tmp_path, photo, speech_wav):
    from live_avatar.core.offline.resume import RenderFiles
    from live_avatar.core.offline.video_writer import count_partial_frames

    args = ["--image", photo, "--audio", speech_wav, "--enable_online_decode", *BASE]
    reference = tmp_path / "reference.mp4"
    assert run_cli([*args, "--output", reference]).returncode == 0

    out = tmp_path / "killed.mp4"
    files = RenderFiles(out)
    proc = run_cli([*args, "--output", out], env={"FAKE_ENGINE_DELAY_S": "0.03"}, wait=False)
    done = _wait_for_clips(files, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    # What was finished plays: at least the clips the state promises.
    assert count_partial_frames(files.partial) >= done * 24

    # Without --resume, the unfinished render is not overwritten.
    res = run_cli([*args, "--output", out])
    assert res.returncode == 2 and "--resume" in res.stderr and files.state.exists()

    res = run_cli([*args, "--output", out, "--resume"])
    assert res.returncode == 0, res.stderr
    assert "resuming after clip" in res.stdout
    assert not files.partial.exists() and not files.state.exists() and not files.work_dir.exists()

    got, want = decode_frames(out), decode_frames(reference)
    assert got.shape == want.shape
    # Same motion state across the seam: the resumed video is the uninterrupted one.
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2
    assert probe(out)["audio_s"] == pytest.approx(probe(reference)["audio_s"], abs=0.03)


def test_ctrl_c_keeps_progress_and_resume_with_other_options_is_refused(tmp_path, photo, speech_wav):
    from live_avatar.core.offline.resume import RenderFiles

    out = tmp_path / "int.mp4"
    files = RenderFiles(out)
    args = ["--image", photo, "--audio", speech_wav, "--output", out, *BASE]
    proc = run_cli([*args, "--enable_online_decode"], env={"FAKE_ENGINE_DELAY_S": "0.03"}, wait=False)
    _wait_for_clips(files, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and files.partial.exists() and files.state.exists()
    assert "Traceback" not in err

    res = run_cli([*args, "--enable_online_decode", "--resume", "--seed", "7"])
    assert res.returncode == 2 and "seed" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num_clip", "0"], "at least 1"),
        (["--infer_frames", "25"], "multiple of 2"),
        (["--size", "big"], "WIDTH\\*HEIGHT"),
        (["--size", "40*40"], "between 64 and"),
        (["--preset", "cinema"], "preview"),
        (["--sample_solver", "dpm++"], "euler"),
    ],
)
def test_invalid_options_are_refused_without_leftovers(tmp_path, photo, speech_wav, extra, message):
    import re

    out = tmp_path / "bad.mp4"
    res = run_cli(["--image", photo, "--audio", speech_wav, "--output", out, *BASE, *extra])
    assert res.returncode == 2
    assert re.search(message, res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_invalid_files_are_refused_without_leftovers(tmp_path, photo, speech_wav):
    import cv2

    flat = tmp_path / "flat.png"
    cv2.imwrite(str(flat), np.full((200, 200, 3), 128, np.uint8))
    not_audio = tmp_path / "notes.mp3"
    not_audio.write_bytes(b"this is not audio at all" * 100)
    not_image = tmp_path / "photo.jpg"
    not_image.write_bytes(b"GIF89a nonsense")
    cases = [
        (["--image", tmp_path / "missing.png", "--audio", speech_wav], "no such file"),
        (["--image", not_image, "--audio", speech_wav], "not a readable image"),
        (["--image", photo, "--audio", tmp_path / "missing.wav"], "no such file"),
        (["--image", photo, "--audio", not_audio], "cannot decode"),
        (["--image", flat, "--audio", speech_wav], "no face"),
        (["--image", photo, "--audio", speech_wav, "--output", tmp_path / "blocked.mp4"], "cannot create"),
    ]
    (tmp_path / "blocked.mp4.work").write_text("a file where the work folder would go")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        res = run_cli(["--output", tmp_path / "bad.mp4", *args, *BASE])  # a case's own --output wins
        assert res.returncode == 2, (args, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_trim_and_loudness(tmp_path, photo, speech_wav, speech_16k):
    out = tmp_path / "trim.mp4"
    res = run_cli(
        ["--image", photo, "--audio", speech_wav, "--output", out, "--trim-silence", "--normalize-loudness", *BASE]
    )
    assert res.returncode == 0, res.stderr
    assert "-16 LUFS" in res.stdout and "silence trimmed" in res.stdout
    import pyloudnorm

    from tests.support.speech import read_wav_16k

    audio = read_wav_16k(out)
    # The 2 s of silence on each side are gone; a 0.1 s margin stays around the sound.
    assert len(audio) <= len(speech_16k) + 0.25 * 16000
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    assert loud[0] < 0.25 * 16000 and len(audio) - loud[-1] < 0.25 * 16000
    assert pyloudnorm.Meter(16000).integrated_loudness(audio.astype(np.float64)) == pytest.approx(-16, abs=1.0)


def test_save_last_frame(tmp_path, photo, speech_wav):
    out = tmp_path / "last.mp4"
    res = run_cli(["--image", photo, "--audio", speech_wav, "--output", out, "--num_clip", "2", "--save_last_frame", *BASE])
    assert res.returncode == 0, res.stderr
    import cv2

    png = cv2.cvtColor(cv2.imread(str(tmp_path / "last.last.png")), cv2.COLOR_BGR2RGB)
    frames = decode_frames(out)
    assert png.shape == frames[-1].shape
    assert np.abs(png.astype(int) - frames[-1].astype(int)).mean() < 1.0
    assert np.abs(png.astype(int) - frames[0].astype(int)).mean() > 1.0


def test_engine_without_saveable_state_keeps_clips_but_refuses_resume(tmp_path, photo, speech_wav):
    from live_avatar.core.offline.resume import RenderFiles
    from live_avatar.core.offline.video_writer import count_partial_frames

    out = tmp_path / "gpu.mp4"
    files = RenderFiles(out)
    env = {"FAKE_ENGINE_DELAY_S": "0.03", "FAKE_ENGINE_NO_STATE": "1"}
    args = ["--image", photo, "--audio", speech_wav, "--output", out, "--enable_online_decode", *BASE]
    proc = run_cli(args, env=env, wait=False)
    done = _wait_for_clips(files, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert count_partial_frames(files.partial) >= done * 24
    res = run_cli([*args, "--resume"], env=env)
    assert res.returncode == 2 and "cannot continue" in res.stderr and "Traceback" not in res.stderr
    assert files.partial.exists()  # the finished clips are not thrown away by a refused resume


def test_resume_refuses_a_damaged_partial_file(tmp_path, photo, speech_wav):
    from live_avatar.core.offline.resume import RenderFiles

    out = tmp_path / "damaged.mp4"
    files = RenderFiles(out)
    args = ["--image", photo, "--audio", speech_wav, "--output", out, "--enable_online_decode", *BASE]
    proc = run_cli(args, env={"FAKE_ENGINE_DELAY_S": "0.03"}, wait=False)
    _wait_for_clips(files, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    files.partial.write_bytes(files.partial.read_bytes()[:1000])
    res = run_cli([*args, "--resume"])
    assert res.returncode == 2 and "shorter than the saved state" in res.stderr


def test_ctrl_c_without_online_decode_writes_the_kept_clips(tmp_path, photo, speech_wav):
    """Reference mode keeps frames in memory; an interruption still writes the finished clips."""
    from live_avatar.core.offline.resume import RenderFiles, load_state
    from live_avatar.core.offline.video_writer import count_partial_frames

    args = ["--image", photo, "--audio", speech_wav, "--no-enable_online_decode", *BASE]
    reference = tmp_path / "reference.mp4"
    assert run_cli([*args, "--output", reference]).returncode == 0

    out = tmp_path / "kept.mp4"
    files = RenderFiles(out)
    proc = run_cli([*args, "--output", out], env={"FAKE_ENGINE_DELAY_S": "0.03"}, wait=False)
    deadline = time.monotonic() + 60
    while not files.partial.exists():  # created when rendering starts
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(3.0)  # several clips of 12 blocks x 30 ms, even on a busy machine
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    done = load_state(files.state).clips_done
    assert done >= 1
    assert count_partial_frames(files.partial) == done * 24

    res = run_cli([*args, "--output", out, "--resume"])
    assert res.returncode == 0, res.stderr
    got, want = decode_frames(out), decode_frames(reference)
    assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_compressed_stereo_input_keeps_its_format(tmp_path, photo, speech_wav):
    """Any format PyAV decodes; the output's track is the user's audio at its own rate and channels."""
    import av

    m4a = tmp_path / "speech.m4a"
    with av.open(str(speech_wav)) as src, av.open(str(m4a), "w") as dst:
        stream = dst.add_stream("aac", rate=44100, layout="stereo")
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=44100)
        for frame in src.decode(audio=0):
            for piece in resampler.resample(frame):
                dst.mux(stream.encode(piece))
        for piece in resampler.resample(None):
            dst.mux(stream.encode(piece))
        dst.mux(stream.encode(None))
    out = tmp_path / "from_m4a.mp4"
    res = run_cli(["--image", photo, "--audio", m4a, "--output", out, "--num_clip", "4", *BASE])
    assert res.returncode == 0, res.stderr
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert (a.rate, a.channels) == (44100, 2)
        assert float(a.duration * a.time_base) == pytest.approx(4 * 24 / 25, abs=0.05)  # cut at the video's end


def test_a_plan_that_does_not_fit_in_memory_is_refused_before_it_starts(tmp_path, photo, speech_wav, monkeypatch, capsys):
    """Kept frames beyond the machine's memory: refused with the option that fixes it; online decode
    (every preset's default) renders the same input."""
    import live_avatar.core.engines as engines
    from live_avatar.cli.main import main
    from live_avatar.core.offline import job

    monkeypatch.setattr(engines, "ENGINES", {**engines.ENGINES, "lite": "test_generate_fake_engine:FakeEngine"})
    monkeypatch.setattr(job, "available_memory_bytes", lambda: 4 << 20)  # 4 MiB: less than 9 s of 256x192 frames
    kept = tmp_path / "kept.mp4"
    assert main(["generate", "--image", str(photo), "--audio", str(speech_wav), "--output", str(kept),
                 "--no-enable_online_decode", *BASE]) == 2
    err = capsys.readouterr().err
    assert "4.0 MiB" not in err and "add --enable_online_decode" in err and "GiB available" in err
    assert not kept.exists() and list(tmp_path.iterdir()) == []
    online = tmp_path / "online.mp4"
    assert main(["generate", "--image", str(photo), "--audio", str(speech_wav), "--output", str(online), *BASE]) == 0
    assert online.is_file()


def test_the_output_audio_is_the_input_at_full_band(tmp_path, photo, speech_16k):
    """The MP4's speech is the input's own (48 kHz here, AAC): a 10 kHz tone in the input is in
    the output at its level (a 16 kHz engine copy could not hold anything above 8 kHz)."""
    import av
    import soxr

    from tests.support.speech import write_wav

    rate = 48000
    speech = soxr.resample(speech_16k, 16000, rate).astype(np.float32)
    t = np.arange(speech.size) / rate
    voice = 0.5 * speech / np.abs(speech).max() + 0.05 * np.sin(2 * np.pi * 10000 * t).astype(np.float32)
    wav = write_wav(tmp_path / "tone.wav", voice, rate)
    out = tmp_path / "tone.mp4"
    res = run_cli(["--image", photo, "--audio", wav, "--output", out, "--num_clip", "3", *BASE])
    assert res.returncode == 0, res.stderr
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert (a.codec_context.name, a.rate) == ("aac", rate) and a.bit_rate >= 96_000
        decoded = np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=0)])
    n = min(decoded.size, voice.size, 1 << 16)

    def band(x, lo, hi):
        spectrum = np.abs(np.fft.rfft(x[:n] * np.hanning(n))) ** 2
        freqs = np.fft.rfftfreq(n, 1 / rate)
        return 10 * np.log10(spectrum[(freqs >= lo) & (freqs < hi)].sum() + 1e-20)

    assert abs(band(decoded, 9900, 10100) - band(voice, 9900, 10100)) <= 3.0
    assert abs(band(decoded, 8000, 20000) - band(voice, 8000, 20000)) <= 3.0
