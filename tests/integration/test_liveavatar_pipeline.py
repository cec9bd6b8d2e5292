"""The liveavatar step pipeline over N CPU ranks (gloo, tiny model; issue 9).

Every render runs in a process of its own (``tests.support.pipeline_render``, or ``avatar generate``): a
process joins one torch.distributed group in its life. Three clips (12 blocks) cross the clip-1 sink refresh.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _render(tmp_path: Path, n: int, sink_refresh: str, vae_gpu: bool = False) -> dict:
    out = tmp_path / f"n{n}_{sink_refresh}{'_vae' if vae_gpu else ''}.npz"
    cmd = [sys.executable, "-m", "tests.support.pipeline_render", str(out), "--num_gpus_dit", str(n),
           "--sink_refresh", sink_refresh] + (["--vae_gpu"] if vae_gpu else [])
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=ENV, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    data = np.load(out)
    return {"frames": data["frames"], "latents": data["latents"], "traces": json.loads(str(data["traces"]))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process generator, per sink refresh mode."""
    folder = tmp_path_factory.mktemp("pipeline_reference")
    cache: dict[str, dict] = {}

    def get(mode: str) -> dict:
        if mode not in cache:
            cache[mode] = _render(folder, 1, mode)
        return cache[mode]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n", "mode", "vae_gpu"),
    [(2, "reencode", True), (3, "reencode", False), (4, "keep_motion", False)],
)
def test_n_ranks_give_the_single_process_frames(tmp_path, reference, n, mode, vae_gpu):
    ref, got = reference(mode), _render(tmp_path, n, mode, vae_gpu)
    assert got["latents"].shape == ref["latents"].shape == (12, 16, 3, 8, 8)
    np.testing.assert_allclose(got["latents"], ref["latents"], rtol=0, atol=1e-5)
    assert np.array_equal(got["frames"], ref["frames"])
    # every block: rank 0's front end, each rank's steps once, the decoding rank (its own with vae_gpu)
    roles = [(r["rank"], r["role"]) for r in got["traces"][-1]["ranks"]]
    assert roles[0] == (0, "front") and roles[-1] == (0, "collect")
    assert [rank for rank, role in roles if role == "steps"] == list(range(n))
    assert [rank for rank, role in roles if role == "vae"] == [n if vae_gpu else n - 1]
    if n == 4:
        _check_overlap(got["traces"])


@pytest.mark.slow
def test_a_stream_session_keeps_blocks_in_the_pipe_and_gets_the_single_process_frames(tmp_path):
    """What the server runs: a StreamSession over 2 ranks submits a block while earlier ones are further
    down the pipe, and the frames equal those of the one-process session."""
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"session_n{n}.npz"
        cmd = [sys.executable, "-m", "tests.support.pipeline_render", str(out), "--num_gpus_dit", str(n),
               "--sink_refresh", "keep_motion", "--through-session"]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=ENV, cwd=REPO)
        assert res.returncode == 0, res.stderr[-3000:]
        data = np.load(out)
        runs[n] = (data["frames"], json.loads(str(data["stats"])))
    (one, one_stats), (two, two_stats) = runs[1], runs[2]
    assert one.shape == (12, 12, 64, 64, 3) and one.std() > 1.0
    assert np.array_equal(one, two)
    assert one_stats["max_blocks_in_flight"] == 1
    assert two_stats["max_blocks_in_flight"] == 3 and two_stats["blocks_in_flight_max"] >= 2, two_stats
    assert two_stats["frames_skipped"] == 0
    # the budget is charged the busiest rank's share of a block, less than the block's trip through both
    charged_ms = two_stats["compute_budget_ms"] * (1 - two_stats["compute_margin_pct"] / 100)
    assert 0 < charged_ms < two_stats["compute_ms_p50"], two_stats


def _check_overlap(traces: list[dict]) -> None:
    """Block k+1 runs on rank 0 while block k is further down, also across the clip-1 sink refresh
    ("keep_motion": the latent it needs was sent as soon as block 0 was clean, so the pipe does not drain)."""
    by_block = {t["block"]: {(r["rank"], r["role"]): r for r in t["ranks"]} for t in traces}
    overlapped = [k for k in range(11) if by_block[k + 1][(0, "steps")]["start"] < by_block[k][(3, "steps")]["end"]]
    assert len(overlapped) >= 6, overlapped
    assert by_block[4][(0, "steps")]["start"] < by_block[3][(3, "vae")]["end"]  # no drain before clip 1


def _generate(tmp_path: Path, name: str, *extra: str, audio: Path, size: str = "64*64", clips: int = 3,
              torchrun: bool = False):
    import skimage.data

    image = Path(skimage.data.__file__).parent / "astronaut.png"
    out = tmp_path / f"{name}.mp4"
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2"] if torchrun else [sys.executable]
    cmd = [*launcher, "-m", "live_avatar.cli.main", "generate", "--engine", "liveavatar", "--tiny",
           "--image", str(image), "--audio", str(audio), "--output", str(out), "--size", size,
           "--num_clip", str(clips), "--quiet", *extra]
    return out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.slow
def test_generate_is_reproducible_and_the_same_over_two_ranks(tmp_path, speech_with_silence_wav):
    """The same command twice writes the same frames (the tiny tokenizer used to differ per process), and
    --num_gpus_dit 2 writes them too, started by the command or by torchrun."""
    runs = {}
    for name, extra, torchrun in (("a", (), False), ("b", (), False), ("two", ("--num_gpus_dit", "2"), False),
                                  ("torchrun", ("--num_gpus_dit", "2"), True)):
        out, proc = _generate(tmp_path, name, *extra, audio=speech_with_silence_wav, torchrun=torchrun)
        said, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        # under torchrun rank 1 runs the command too, but only rank 0 prepares the audio and plans
        # (both did, and raced on the work folder's files)
        assert said.count("plan: ") == 1, said
        runs[name] = _frames(out)
    assert runs["a"].shape == (144, 64, 64, 3)
    assert runs["a"].std() > 1.0  # not a blank video
    assert np.array_equal(runs["a"], runs["b"])
    assert np.array_equal(runs["a"], runs["two"])
    assert np.array_equal(runs["a"], runs["torchrun"])


@pytest.mark.slow
def test_a_killed_rank_ends_the_render_with_a_clear_error(tmp_path, speech_with_silence_wav):
    import psutil

    out, proc = _generate(tmp_path, "killed", "--num_gpus_dit", "2", audio=speech_with_silence_wav, clips=30)
    try:
        partial = out.with_name(out.name + ".partial.ts")
        deadline = time.monotonic() + 180
        worker = None
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "pipeline.worker" in " ".join(c.cmdline())]
            if workers and partial.exists():  # rendering has started
                worker = workers[0]
                break
            time.sleep(0.2)
        assert worker is not None, "the render did not start with a worker rank"
        worker.kill()
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=90)
        assert time.monotonic() - killed_at < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode not in (0, None)
    assert "rank 1" in err and ("exited with status" in err or "lost its connection" in err), err[-2000:]
    assert "failed" in err


@pytest.mark.slow
def test_serve_reports_the_pipeline_and_a_dead_rank_on_healthz(tmp_path):
    import psutil

    from tests.support.server_process import ServerProcess, http_json

    server = ServerProcess(["--engine", "liveavatar", "--tiny", "--device", "cpu", "--num_gpus_dit", "2"],
                           tmp_path / "server.log", start_timeout_s=240.0, env=ENV)
    with server:
        status, health = http_json("GET", f"{server.url}/healthz")
        assert status == 200 and health["status"] == "ok", health
        assert health["pipeline"]["world_size"] == 2 and health["pipeline"]["failure"] is None
        assert "rank 1: steps [2, 3]" in health["pipeline"]["plan"]
        # a WebRTC session through the real server, pipelined: up to 3 blocks in the pipe (this fast tiny
        # pipe is done with a block before the next one's audio is there; the overlap is tested above)
        stream = asyncio.run(_live_session_stats(server.url, tmp_path))
        assert stream["max_blocks_in_flight"] == 3 and stream["blocks_in_flight_max"] >= 1, stream
        assert stream["frames_generated"] >= 24 and stream["compute_ms_p50"] > 0, stream
        print("live session over 2 ranks:", {k: stream[k] for k in ("frames_generated", "frames_skipped", "compute_ms_p50", "compute_margin_pct")})
        workers = [c for c in psutil.Process(server.proc.pid).children(recursive=True)
                   if "pipeline.worker" in " ".join(c.cmdline())]
        assert len(workers) == 1
        workers[0].kill()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, health = http_json("GET", f"{server.url}/healthz")
            if health["status"] != "ok":
                break
            time.sleep(0.2)
        assert status == 200 and health["status"] == "degraded", health  # the server stays up and says why
        assert "rank 1" in health["pipeline"]["failure"] and "exited" in health["pipeline"]["failure"]


async def _live_session_stats(url: str, folder: Path) -> dict:
    """Stream 4 s of a tone into a session over /offer; its stream stats once it has shown frames."""
    from tests.support.live_checks import start_streaming
    from tests.support.server_process import http_json
    from tests.support.speech import write_wav

    tone = (0.2 * np.sin(2 * np.pi * 220 * np.arange(16_000 * 4) / 16_000)).astype(np.float32)
    peer = await start_streaming(url, write_wav(folder / "tone.wav", tone, 16_000))
    try:
        await asyncio.sleep(2.0)
        status, stats = await asyncio.to_thread(http_json, "GET", f"{url}/sessions/{peer.session_id}/stats")
        assert status == 200, stats
        return stats["stream"]
    finally:
        await peer.close()
