"""``avatar generate --engine liveavatar --tiny``: the GPU engine plugs into the same offline path.

The tiny configuration has random weights (the video is noise); this checks the plumbing: the
engine renders exactly the planned size and frame count, the audio is muxed, and since its state
cannot be saved, the user is told up front that the render cannot be resumed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_liveavatar_tiny_one_clip(tmp_path, speech_with_silence_wav):
    import av
    import skimage.data

    image = Path(skimage.data.__file__).parent / "astronaut.png"
    out = tmp_path / "tiny.mp4"
    cmd = [sys.executable, "-m", "live_avatar.cli.main", "generate", "--engine", "liveavatar", "--tiny",
           "--image", str(image), "--audio", str(speech_with_silence_wav), "--output", str(out),
           "--size", "128*128", "--num_clip", "1", "--infer_frames", "12", "--enable_online_decode", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "size: 128*128" in res.stdout and "cannot be resumed" in res.stderr
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.width, v.codec_context.height) == (128, 128)
        assert sum(1 for p in c.demux(v) if p.size) == 12
        assert float(a.duration * a.time_base) == pytest.approx(12 / 25, abs=0.03)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.mp4"]
