"""Unit tests of the output parts that need no server: the slot encoder (gap filling, constant
rate, keyframes), the virtual camera's frame path with a fake camera object (this machine has no
/dev/video and no v4l2loopback module, so pyvirtualcam itself cannot open a device here), URL checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

from live_avatar.server.media.fanout import Fanout
from live_avatar.server.media.playout import OutputSlot
from live_avatar.server.outputs.encoder import EncoderSettings, MuxTarget, SlotEncoder
from live_avatar.server.outputs.stream_push import (
    OutputRequestError,
    check_push_url,
    redact_url,
)
from live_avatar.server.outputs.virtual_camera import (
    VirtualCameraOutput,
    fit_frame,
    open_pyvirtualcam,
)

SAMPLES = 1920  # 48 kHz audio of one 25 fps frame


def slot(n: int, value: int = 0, size: tuple[int, int] = (64, 96)) -> OutputSlot:
    frame = np.full((*size, 3), value, np.uint8)
    audio = (np.sin(np.arange(SAMPLES) * 0.05) * 8000).astype(np.int16)
    return OutputSlot(slot=n, due=0.0, frame_index=n, frame=frame, audio=audio, repeated=False)


def test_encoder_fills_missed_slots_and_keeps_a_constant_rate(tmp_path) -> None:
    path = tmp_path / "out.mp4"
    encoder = SlotEncoder(MuxTarget(str(path), "mp4"), EncoderSettings(), width=96, height=64, audio_samples_per_frame=SAMPLES)
    for n in [*range(10, 40), *range(45, 110)]:  # slots 40-44 were lost by this output
        encoder.write(slot(n, value=n))
    encoder.close()
    assert encoder.frames_written == 100 and encoder.frames_filled == 5
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name,r_frame_rate,duration,width,height",
         "-show_entries", "packet=stream_index,flags", "-of", "json", str(path)],
        capture_output=True, check=True, timeout=30,
    )
    info = json.loads(out.stdout)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert (streams["video"]["width"], streams["video"]["height"]) == (96, 64)
    assert abs(float(streams["video"]["duration"]) - 4.0) < 0.05 and abs(float(streams["audio"]["duration"]) - 4.0) < 0.1
    video_flags = [p["flags"] for p in info["packets"] if p["stream_index"] == 0]
    keyframes = [i for i, f in enumerate(video_flags) if "K" in f]
    assert keyframes == [0, 50], keyframes  # every 2 s at 25 fps, no scene-cut keyframes


def test_fit_frame_letterboxes_into_the_camera_size() -> None:
    frame = np.full((512, 512, 3), 200, np.uint8)
    fitted = fit_frame(frame, 1280, 720)
    assert fitted.shape == (720, 1280, 3)
    assert fitted[360, 640].tolist() == [200, 200, 200] and fitted[360, 100].tolist() == [0, 0, 0]
    assert fit_frame(frame, 512, 512) is frame


class FakeCamera:
    """Stands in for pyvirtualcam.Camera (send RGB frames of its size, close)."""

    def __init__(self, device, width, height, fps) -> None:
        self.device, self.width, self.height, self.fps = device or "/dev/video-fake", width, height, fps
        self.frames: list[np.ndarray] = []
        self.closed = False

    def send(self, frame: np.ndarray) -> None:
        assert frame.shape == (self.height, self.width, 3) and frame.dtype == np.uint8
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closed = True


def test_virtual_camera_output_sends_every_slot_to_the_camera() -> None:
    async def run() -> FakeCamera:
        session = SimpleNamespace(id="s1", fanout=Fanout(default_maxsize=4))
        output = VirtualCameraOutput.open(session, None, 320, 240, 25, camera_factory=FakeCamera)
        output.start()
        for n in range(20):
            session.fanout.publish(slot(n, value=10 * n, size=(64, 64)))
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 5
        while output.frames_sent < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await output.stop()
        assert output.describe()["state"] == "stopped"
        return output.camera

    camera = asyncio.run(run())
    assert len(camera.frames) == 20 and camera.closed
    assert [int(f[120, 160, 0]) for f in camera.frames] == [10 * n for n in range(20)]  # in order, letterboxed to 320x240


def test_without_a_camera_device_the_reason_is_a_409() -> None:
    with pytest.raises(OutputRequestError) as err:
        open_pyvirtualcam(None, 64, 64, 25)
    assert err.value.status == 409
    assert "pyvirtualcam" in str(err.value) or "virtual camera" in str(err.value)


def test_push_urls_are_checked_and_keys_never_shown() -> None:
    assert redact_url("rtmp://live.example.org/app/SECRETKEY") == "rtmp://live.example.org/app/***"
    assert "pw" not in redact_url("rtmp://user:pw@host:1935/app/key")

    async def check(url):
        try:
            return await check_push_url(url)
        except OutputRequestError as exc:
            return exc.status, str(exc)

    assert asyncio.run(check("rtmp://127.0.0.1:1935/live/key")) == "rtmp"
    for url, status, words in [
        ("ftp://x/y/z", 400, "scheme"),
        ("rtmp:///live/key", 400, "no host"),
        ("rtmp://127.0.0.1:99999/live/key", 400, "not a valid URL"),
        ("rtmp://host.invalid/live/key", 422, "does not resolve"),
        (12, 400, "'url'"),
    ]:
        got = asyncio.run(check(url))
        assert got[0] == status and words in got[1], (url, got)


def test_a_push_whose_writes_block_is_reported_stalled() -> None:
    """A real frozen ingest takes a long while to block a write here (loopback socket buffers hold
    tens of seconds of this low-bitrate stream), so the rule is checked on its own."""
    from live_avatar.server.outputs.encoder import EncoderSettings as Settings
    from live_avatar.server.outputs.stream_push import StreamPushOutput

    session = SimpleNamespace(id="s1", fanout=Fanout())
    push = StreamPushOutput(session, "rtmp://127.0.0.1/live/key", Settings(), io_timeout_s=2.0)
    push.state, push._last_write = "live", time.monotonic()
    assert push.describe()["state"] == "live"
    push._last_write = time.monotonic() - 3.0  # the last write returned 3 s ago
    assert push.describe()["state"] == "stalled"
    push.state = "reconnecting"
    assert push.describe()["state"] == "reconnecting"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("outputs: {max_viewers_per_session: 0}\n", "outputs.max_viewers_per_session: must be at least 1"),
        ("outputs: {reconnect_initial_s: -1}\n", "outputs.reconnect_initial_s: must be positive"),
        ("outputs: {recordings_dir: [a]}\n", "outputs.recordings_dir"),
    ],
)
def test_bad_outputs_settings_name_the_key(tmp_path, text, message) -> None:
    from live_avatar.server.config import load_server_config

    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_server_config(path)
