"""``avatar bench outputs``: one session with several outputs at once: what each consumer gets and costs.

A real server process (``avatar serve``, lite engine) and nginx with libnginx-mod-rtmp as the RTMP
ingest, both started here on loopback. One session is driven over WebRTC (a LoopbackPeer sending
espeak speech with pauses through POST /offer). Consumers are added one step at a time (``--step-s``
each): the speaker alone, + WHEP viewer 1, 2, 3 (aiortc peers in this process), + an RTMP push to
nginx, + a recording. Each step measures

* fps at every consumer: video frames received per second by the speaker and each viewer (arrival
  times), frames written per second by the push and the recording (server stats), frames read back
  from nginx per second (an ffmpeg pull, after the push step);
* the server process's CPU (psutil, CPU-seconds per second): the cost of each added consumer is
  the difference to the step before (per second and per published slot; noisy on a shared
  machine); a push's or recording's own worker thread CPU is also measured exactly (thread time);
* the A/V offset on the RTMP stream, from the content (what a player shows): the lag between
  frame motion and the speech envelope in the pull (10 ms grid) minus the same lag in the
  recording (same encoder, MP4 timestamps exact) and, for reference, minus the lag at the
  speaker's WebRTC receiver (by arrival time: its jitter buffers included); and from the
  timestamps: how far apart audio and video timestamps travel in the order nginx delivers the
  packets (interleave skew; both streams are stamped from the same slot numbers).

The viewers and pullers run on the same machine as the server (2 shared cores here), so their
decoding competes with the server: the per-consumer CPU is the server's alone.

``--driver websocket`` is the hook for a session driven by the audio WebSocket (POST /sessions +
GET /sessions/{id}/audio, issue 11 point 1): ``SessionDriver`` is the interface; it is refused
until that endpoint exists. Results: bench/results/outputs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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

from tests.support.nginx_rtmp import NginxRtmp, nginx_rtmp_missing
from tests.support.server_process import ServerProcess, http_json

DESCRIPTION = __doc__
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SETTLE_S = 2.0  # after adding a consumer, before measuring
PULL_S = 8.0  # seconds of the RTMP stream read back from nginx
SPEECH = ("Hello and welcome to the stream. Today we look at three new outputs of the avatar server. "
          "Viewers, a push to the platform, and a recording, all from one generator.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--step-s", type=float, default=20.0, help="seconds measured per step (default 20)")
    p.add_argument("--viewers", type=int, default=3, help="WHEP viewers added one by one (default 3)")
    p.add_argument("--driver", choices=["webrtc", "websocket"], default="websocket",
                   help="what feeds the session's audio: websocket (default: POST /sessions + its audio WebSocket, "
                        "as a TTS does) or webrtc (a peer's microphone through POST /offer)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "outputs.json")


# -- the session's audio source ----------------------------------------------------------------
class SessionDriver:
    """Opens a session, feeds it speech, and receives its output (as a consumer) if it is a peer."""

    name = "driver"

    async def open(self, url: str, speech_48k: np.ndarray) -> str:  # returns the session id
        raise NotImplementedError

    def frame_times(self) -> np.ndarray:
        return np.zeros(0)

    async def close(self) -> None:
        pass


class WebRtcDriver(SessionDriver):
    """A LoopbackPeer through POST /offer: sends the speech as its microphone, receives video and audio."""

    name = "webrtc"

    async def open(self, url: str, speech_48k: np.ndarray) -> str:
        from tests.support.loopback_peer import LoopbackPeer

        # gray images of the first 15 s only (the content A/V measure uses the first step)
        self.peer = LoopbackPeer(speech_48k, frame_format="gray", max_images=25 * 15)
        session_id = await self.peer.connect_offer(url)
        await asyncio.wait_for(self.peer.connected.wait(), 20)
        return session_id

    def frame_times(self) -> np.ndarray:
        return np.array([f.arrival for f in self.peer.video_frames])

    async def close(self) -> None:
        await self.peer.close()


class WebSocketDriver(SessionDriver):
    """A session without a WebRTC input, as a TTS or an agent drives one: POST /sessions, then the
    speech as 48 kHz s16le PCM over its audio WebSocket at real time. It has no peer of its own, so
    a WHEP viewer of its own stands for the speaker's picture (the first consumer)."""

    name = "websocket"

    async def open(self, url: str, speech_48k: np.ndarray) -> str:
        from tests.support.speech_socket import SpeechSocket
        from tests.support.whep_viewer import WhepViewerPeer

        status, body = await asyncio.to_thread(http_json, "POST", f"{url}/sessions", {})
        if status != 201:
            raise RuntimeError(f"POST /sessions answered {status}: {body}")
        session_id = body["session_id"]
        self.socket = await SpeechSocket.connect(url, session_id)
        await self.socket.start(48000)
        self._pushing = asyncio.create_task(self.socket.push(speech_48k, 48000, speed=1.0))
        self.viewer = WhepViewerPeer(frame_format="gray", max_images=25 * 15)
        await self.viewer.watch(url, session_id)
        await asyncio.wait_for(self.viewer.connected.wait(), 20)
        self.peer = self.viewer  # the content A/V measure reads the speaker's picture and sound here
        return session_id

    def frame_times(self) -> np.ndarray:
        return self.viewer.frame_times()

    async def close(self) -> None:
        self._pushing.cancel()
        await asyncio.gather(self._pushing, return_exceptions=True)
        await self.socket.close()
        await self.viewer.close()


# -- measurements --------------------------------------------------------------------------------
def speech_with_pauses(total_s: float) -> np.ndarray:
    from tests.support.speech import espeak_speech

    speech = espeak_speech(SPEECH, 48000)
    pause = np.zeros(int(1.2 * 48000), np.float32)
    unit = np.concatenate([pause, speech])
    return np.tile(unit, int(np.ceil(total_s * 48000 / unit.size)) + 1)


def rate_in(times: np.ndarray, start: float, end: float) -> float:
    return float(((times >= start) & (times < end)).sum() / (end - start))


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


async def outputs_of(url: str, session_id: str) -> dict[str, dict]:
    status, listing = await asyncio.to_thread(http_json, "GET", f"{url}/sessions/{session_id}/outputs")
    return {o["output_id"]: o for o in listing["outputs"]} if status == 200 else {}


def pull_rtmp(url: str, seconds: float, out: Path) -> dict[str, Any]:
    """Read ``seconds`` of the live stream back from nginx (ffmpeg, stream copy) and measure it."""
    t0 = time.monotonic()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-rw_timeout", "10000000", "-i", url, "-t", str(seconds), "-c", "copy", str(out)],
                   capture_output=True, timeout=seconds + 30, check=True)
    wall = time.monotonic() - t0
    return {**read_media(out), "seconds_read": wall}


def read_media(path: Path, max_s: float = 20.0) -> dict[str, Any]:
    """Codecs, rates, keyframes, timestamp interleaving, and the decoded frames (grey) and audio of
    the first ``max_s`` seconds of a media file (an RTMP pull or a recording)."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        info = {"video_codec": video.codec_context.name, "audio_codec": audio.codec_context.name,
                "width": video.codec_context.width, "height": video.codec_context.height,
                "audio_rate": audio.codec_context.sample_rate}
        frames, video_pts, keyframes = [], [], []
        samples, audio_start = [], None
        last_dts: dict[str, float] = {}
        skews = []  # in the order nginx delivers packets: how far the two streams' timestamps are apart
        for packet in container.demux(video, audio):
            if packet.size == 0:
                continue
            if video_pts and video_pts[-1] - video_pts[0] > max_s:
                break
            if packet.dts is not None:
                last_dts[packet.stream.type] = float(packet.dts * packet.time_base)
                if len(last_dts) == 2 and keyframes:
                    skews.append(abs(last_dts["audio"] - last_dts["video"]))
            if packet.stream.type == "video" and packet.is_keyframe:
                keyframes.append(float(packet.pts * packet.time_base))
            for frame in packet.decode():
                if packet.stream.type == "video":
                    frames.append(frame.to_ndarray(format="gray"))
                    video_pts.append(float(frame.pts * frame.time_base))
                else:
                    if audio_start is None:
                        audio_start = float(frame.pts * frame.time_base)
                    samples.append(frame.to_ndarray().mean(axis=0))
    video_pts_arr = np.array(video_pts)
    return {
        **info,
        "frames": len(frames),
        "fps_by_timestamps": float((len(video_pts) - 1) / (video_pts_arr[-1] - video_pts_arr[0])) if len(video_pts) > 1 else None,
        "keyframe_interval_s": float(np.median(np.diff(keyframes))) if len(keyframes) > 1 else None,
        "interleave_skew_ms": {"p50": float(np.percentile(skews, 50)) * 1000.0, "p95": float(np.percentile(skews, 95)) * 1000.0}
        if skews else None,
        "_frames": frames, "_video_pts": video_pts_arr, "_audio": np.concatenate(samples) if samples else np.zeros(0),
        "_audio_start": audio_start or 0.0, "_audio_rate": info["audio_rate"],
    }


def motion_audio_lag_ms(frame_times: np.ndarray, frames: list[np.ndarray], audio_times: np.ndarray, audio: np.ndarray) -> float | None:
    """Lag (ms) of frame motion behind the speech envelope, by cross-correlation on a 10 ms grid
    within +-300 ms; positive: the picture moves after the sound."""
    if len(frames) < 50 or audio.size < 48000:
        return None
    motion = np.array([0.0] + [float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) for a, b in zip(frames[1:], frames[:-1], strict=True)])
    grid = np.arange(max(frame_times[0], audio_times[0]) + 0.5, min(frame_times[-1], audio_times[-1]) - 0.5, 0.01)
    if grid.size < 300:
        return None
    m = np.interp(grid, frame_times, motion)
    window = 480  # 10 ms at 48 kHz
    n = audio.size // window
    env_t = audio_times[: n * window : window] + window / 2 / 48000
    env = np.sqrt((audio[: n * window].reshape(n, window) ** 2).mean(axis=1))
    e = np.interp(grid, env_t, env)
    m, e = (m - m.mean()) / (m.std() + 1e-9), (e - e.mean()) / (e.std() + 1e-9)
    lags = range(-30, 31)
    scores = [float(np.mean(m[max(0, k): m.size + min(0, k)] * e[max(0, -k): e.size - max(0, k)])) for k in lags]
    return float(list(lags)[int(np.argmax(scores))] * 10.0)


def media_lag_ms(media: dict[str, Any]) -> float | None:
    audio_times = media["_audio_start"] + np.arange(media["_audio"].size) / media["_audio_rate"]
    return motion_audio_lag_ms(media["_video_pts"], media["_frames"], audio_times, media["_audio"])


def peer_motion_audio_lag_ms(peer) -> float | None:
    frames = [f for f in peer.video_frames if f.image is not None]
    if not frames or not peer.audio_frames:
        return None
    audio_times, chunks = [], []
    for a in peer.audio_frames:  # each received audio frame stamped with its arrival, spread over its samples
        audio_times.append(a.arrival - np.arange(a.samples.size)[::-1] / 48000)
        chunks.append(a.samples)
    t = np.concatenate(audio_times)
    order = np.argsort(t, kind="stable")
    return motion_audio_lag_ms(np.array([f.arrival for f in frames]), [f.image for f in frames], t[order], np.concatenate(chunks)[order])


def consumer_costs(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU each added consumer costs the server, per second and per published slot. On a busy
    machine a starved server publishes fewer slots (and spends less), so the per-slot figure is the
    fairer comparison between steps."""
    costs = {}
    for before, step in itertools.pairwise(steps):
        per_slot = [s["server_cpu_s_per_s"] / s["session_fps"] * 1000.0 if s.get("session_fps") else None for s in (before, step)]
        costs[step["step"]] = {
            "cpu_s_per_s": step["server_cpu_s_per_s"] - before["server_cpu_s_per_s"],
            "cpu_ms_per_slot": None if None in per_slot else per_slot[1] - per_slot[0],
        }
    base = steps[0]
    return {"speaker_only": {"cpu_s_per_s": base["server_cpu_s_per_s"],
                             "cpu_ms_per_slot": base["server_cpu_s_per_s"] / base["session_fps"] * 1000.0 if base.get("session_fps") else None},
            "added": costs}


# -- the run -------------------------------------------------------------------------------------
async def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from tests.support.whep_viewer import WhepViewerPeer

    config = workdir / "server.yaml"
    config.write_text(f"outputs:\n  recordings_dir: {workdir / 'recordings'}\n")
    server = ServerProcess(["--config", str(config)], workdir / "server.log")
    nginx = NginxRtmp(workdir / "nginx")
    driver: SessionDriver = WebRtcDriver() if args.driver == "webrtc" else WebSocketDriver()
    total_s = (args.viewers + 4) * (args.step_s + SETTLE_S) + 3 * PULL_S + 30
    steps: list[dict[str, Any]] = []
    viewers: list[WhepViewerPeer] = []
    consumers: dict[str, Any] = {}  # name -> (kind, object)
    pulls: dict[str, Any] = {}
    with server, nginx:
        pid = server.proc.pid
        session_id = await driver.open(server.url, speech_with_pauses(total_s))
        while len(driver.frame_times()) < 10:
            await asyncio.sleep(0.1)

        async def measure(label: str) -> None:
            await asyncio.sleep(SETTLE_S)
            import psutil

            psutil.cpu_percent()  # starts the machine-wide measure
            own0 = cpu_seconds(os.getpid())
            t0, cpu0, outs0 = time.monotonic(), cpu_seconds(pid), await outputs_of(server.url, session_id)
            await asyncio.sleep(args.step_s)
            t1, cpu1, outs1 = time.monotonic(), cpu_seconds(pid), await outputs_of(server.url, session_id)
            machine_busy, own1 = psutil.cpu_percent(), cpu_seconds(os.getpid())
            fps = {f"speaker ({driver.name})": rate_in(driver.frame_times(), t0, t1)}
            for i, viewer in enumerate(viewers, 1):
                fps[f"whep viewer {i}"] = rate_in(viewer.frame_times(), t0, t1)
            written, thread_cpu = {}, {}
            for name, output_id in consumers.items():
                if output_id in outs0 and output_id in outs1:
                    # fresh slots it got and encoded; its stream stays at 25 fps by repeating the last frame
                    fps[name] = (outs1[output_id]["slots_encoded"] - outs0[output_id]["slots_encoded"]) / (t1 - t0)
                    written[name] = (outs1[output_id]["frames_written"] - outs0[output_id]["frames_written"]) / (t1 - t0)
                    # its own worker thread's CPU: exact whatever else runs on the machine
                    thread_cpu[name] = (outs1[output_id]["cpu_s"] - outs0[output_id]["cpu_s"]) / (t1 - t0)
            _status, stats = await asyncio.to_thread(http_json, "GET", f"{server.url}/sessions/{session_id}/stats")
            step = {"step": label, "seconds": t1 - t0, "server_cpu_s_per_s": (cpu1 - cpu0) / (t1 - t0),
                    # the machine is shared: what else ran (this process's peers and pulls, other work)
                    "machine_cpu_busy_percent": machine_busy, "bench_process_cpu_s_per_s": (own1 - own0) / (t1 - t0),
                    "load_average_1min": os.getloadavg()[0],
                    "fps": fps, "frames_written_per_s": written, "output_thread_cpu_s_per_s": thread_cpu, "session_fps": stats.get("fps"), "states": {n: outs1.get(o, {}).get("state") for n, o in consumers.items()},
                    "slots_dropped": {n: outs1.get(o, {}).get("slots_dropped") for n, o in consumers.items()}}
            if steps:
                step["added_cpu_s_per_s"] = step["server_cpu_s_per_s"] - steps[-1]["server_cpu_s_per_s"]
            steps.append(step)
            print(f"  {label:<22} server CPU {step['server_cpu_s_per_s']:.2f} s/s (machine {machine_busy:.0f}% busy); fps "
                  + ", ".join(f"{k} {v:.1f}" for k, v in fps.items()), flush=True)

        await measure("speaker only")
        webrtc_lag = peer_motion_audio_lag_ms(driver.peer)
        for i in range(args.viewers):
            viewer = WhepViewerPeer(frame_format=None)
            await viewer.watch(server.url, session_id)
            await asyncio.wait_for(viewer.connected.wait(), 20)
            viewers.append(viewer)
            await measure(f"+ whep viewer {i + 1}")
        status, body = await asyncio.to_thread(http_json, "POST", f"{server.url}/sessions/{session_id}/outputs",
                                               {"type": "rtmp", "url": nginx.url("bench")})
        if status != 201:
            raise RuntimeError(f"starting the RTMP push failed: {status} {body}")
        consumers["rtmp push"] = body["output_id"]
        await measure("+ rtmp push")
        pulls["after push"] = await asyncio.to_thread(pull_rtmp, nginx.url("bench"), PULL_S, workdir / "pull1.flv")
        status, body = await asyncio.to_thread(http_json, "POST", f"{server.url}/sessions/{session_id}/outputs", {"type": "record"})
        if status != 201:
            raise RuntimeError(f"starting the recording failed: {status} {body}")
        consumers["recording"] = body["output_id"]
        await measure("+ recording")
        pulls["with everything"] = await asyncio.to_thread(pull_rtmp, nginx.url("bench"), PULL_S, workdir / "pull2.flv")
        await asyncio.to_thread(http_json, "DELETE", f"{server.url}/sessions/{session_id}/outputs/{consumers['recording']}")
        for viewer in viewers:
            await viewer.close()
        await driver.close()

        recording = read_media(workdir / "recordings" / f"{consumers['recording']}.mp4")

    recording_lag = media_lag_ms(recording)
    rtmp = {}
    for name, pull in pulls.items():
        lag = media_lag_ms(pull)
        rtmp[name] = {k: v for k, v in pull.items() if not k.startswith("_")}
        rtmp[name]["motion_after_speech_ms"] = lag
        # against the recording: the same encoder, timestamps kept exactly by MP4 (edit list for
        # AAC's priming); what the RTMP path adds or loses
        rtmp[name]["av_offset_vs_recording_ms"] = None if lag is None or recording_lag is None else lag - recording_lag
        # against the speaker's WebRTC receiver (arrival times: includes its jitter buffers)
        rtmp[name]["av_offset_vs_webrtc_ms"] = None if lag is None or webrtc_lag is None else lag - webrtc_lag
    return {
        "benchmark": "outputs",
        "command": "avatar bench outputs " + " ".join(sys.argv[3:]) if sys.argv[1:2] == ["bench"] else "avatar bench outputs",
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "config": {"driver": args.driver, "viewers": args.viewers, "step_s": args.step_s, "engine": "lite",
                   "rtmp_ingest": "nginx + libnginx-mod-rtmp on loopback", "pull_s": PULL_S},
        "steps": steps,
        "consumer_cpu_cost": consumer_costs(steps),
        "rtmp_stream": rtmp,
        "speaker_motion_after_speech_ms": webrtc_lag,
        "recording_motion_after_speech_ms": recording_lag,
    }


def run(args: argparse.Namespace) -> int:
    missing = nginx_rtmp_missing()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-outputs-") as tmp:
        result = asyncio.run(_run(args, Path(tmp)))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    for name, cost in result["consumer_cpu_cost"]["added"].items():
        print(f"  {name:<22} adds {cost['cpu_s_per_s']:+.2f} CPU-s/s, {cost['cpu_ms_per_slot']:+.1f} CPU-ms per slot")
    for name, pull in result["rtmp_stream"].items():
        print(f"  RTMP pull ({name}): {pull['video_codec']}+{pull['audio_codec']} {pull['fps_by_timestamps']:.2f} fps, "
              f"keyframe every {pull['keyframe_interval_s']} s, interleave skew {pull['interleave_skew_ms']} ms, "
              f"A/V vs the recording {pull['av_offset_vs_recording_ms']} ms, vs WebRTC {pull['av_offset_vs_webrtc_ms']} ms")
    return 0
