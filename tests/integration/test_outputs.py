"""Outputs of a live session (issue 11): WHEP viewers, RTMP push into a real nginx-rtmp, recordings,
the virtual camera's refusal here, and bad requests. One in-process server with the lite engine; each
test drives a speaker session over loopback WebRTC (a LoopbackPeer through POST /offer)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import aiohttp
import numpy as np
import pytest
import pytest_asyncio

from live_avatar.server.config import ServerConfig
from tests.support.inprocess import serve_in_process
from tests.support.loopback_peer import LoopbackPeer
from tests.support.nginx_rtmp import NginxRtmp, nginx_rtmp_missing, probe_stream
from tests.support.whep_viewer import WhepViewerPeer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def lite_engine():
    from live_avatar.core.engines import load_engine

    return load_engine("lite")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(lite_engine, tmp_path_factory):
    config = ServerConfig(port=0)
    config.outputs.recordings_dir = str(tmp_path_factory.mktemp("recordings"))
    config.outputs.reconnect_max_s = 2.0  # the test restarts nginx: come back quickly
    async with serve_in_process(config, engine=lite_engine) as running:
        yield running


@pytest.fixture
def nginx(tmp_path):
    missing = nginx_rtmp_missing()
    if missing:
        pytest.skip(missing)
    with NginxRtmp(tmp_path / "nginx") as ingest:
        yield ingest


async def request(method: str, url: str, body=None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body) as resp:
        return resp.status, await resp.json()


async def start_speaker(server, wav) -> LoopbackPeer:
    peer = LoopbackPeer.from_wav(wav, frame_format="gray")
    await peer.connect_offer(server.url)
    await asyncio.wait_for(peer.connected.wait(), 10)
    return peer


async def wait_for_state(server, session_id: str, output_id: str, states: tuple[str, ...], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status, listing = await request("GET", f"{server.url}/sessions/{session_id}/outputs")
        assert status == 200, listing
        output = next(o for o in listing["outputs"] if o["output_id"] == output_id)
        if output["state"] in states:
            return output
        assert time.monotonic() < deadline, f"output never reached {states}: {output}"
        await asyncio.sleep(0.2)


def fps_between(times: np.ndarray, start: float, end: float) -> float:
    return float(((times >= start) & (times < end)).sum() / (end - start))


def same_frames(reference: list, frames: list, box: tuple[int, int, int, int]) -> dict[str, float]:
    """Find which of the reference's frames each of ``frames`` is, and how sure that is.

    RTP timestamps start at a random origin per sender but advance by the session's one slot clock
    (3600 a slot), so frames of the same slot differ by one constant offset. Candidates: the most
    common difference between frames that arrived closest in time, +-4 slots; the one whose pairs
    look most alike in the mouth region (VP8 codes each connection on its own: similar, not
    identical) wins. Returns the share of frames paired at the best offset, its error, the lowest
    error of offsets 2+ slots away, and the median arrival lag behind the reference (s)."""
    x0, y0, x1, y1 = box
    ref_times = np.array([f.arrival for f in reference])
    nearest = [reference[int(np.abs(ref_times - f.arrival).argmin())] for f in frames]
    differences = [(f.pts - r.pts) % (1 << 32) for f, r in zip(frames, nearest, strict=True)]
    center = max(set(differences), key=differences.count)
    by_pts = {r.pts: r for r in reference}

    def pairs_at(offset: int) -> list:
        found = [(f, by_pts.get((f.pts - offset) % (1 << 32))) for f in frames]
        return [(f, r) for f, r in found if r is not None]

    def error(pairs: list) -> float:
        crop = (slice(y0, y1), slice(x0, x1))
        return float(np.mean([np.abs(f.image[crop].astype(np.float32) - r.image[crop].astype(np.float32)).mean() for f, r in pairs]))

    errors = {k: error(pairs_at(center + k * 3600)) for k in range(-4, 5) if len(pairs_at(center + k * 3600)) > len(frames) // 2}
    best = min(errors, key=errors.get)
    pairs = pairs_at(center + best * 3600)
    return {
        "paired": len(pairs) / len(frames),
        "error": errors[best],
        "error_two_slots_off": min(e for k, e in errors.items() if abs(k - best) >= 2),
        "lag_s": float(np.median([f.arrival - r.arrival for f, r in pairs])),
    }


def mouth_box(server) -> tuple[int, int, int, int]:
    """The default avatar's lips and jaw in output-frame pixels (MediaPipe FaceMesh lip landmarks of its rig)."""
    points = server.state["avatars"].get(None).rig.landmarks[[61, 291, 0, 17, 13, 14, 78, 308]]
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    pad = 0.25 * (x1 - x0)
    return int(x0 - pad), int(y0 - pad), int(x1 + pad), int(y1 + 2 * pad)


async def test_whep_viewers_get_the_same_frames_and_a_dead_one_slows_nobody(server, speech_with_silence_wav) -> None:
    speaker = await start_speaker(server, speech_with_silence_wav)
    viewers = [WhepViewerPeer(frame_format="gray") for _ in range(2)]
    try:
        for viewer in viewers:
            location = await viewer.watch(server.url, speaker.session_id)
            assert location.startswith(f"/sessions/{speaker.session_id}/whep/")
        await asyncio.gather(*(asyncio.wait_for(v.connected.wait(), 10) for v in viewers))
        await asyncio.sleep(5.0)  # the speech starts 2 s into the file: the mouth moves in this window
        t_kill = time.monotonic()
        await viewers[1].vanish()  # its transport dies: no goodbye, no more consent replies
        await asyncio.sleep(5.0)
        t_end = time.monotonic()

        # -- the same frames: every frame a viewer got is one the speaker got (and vice versa),
        # in the same order, and each viewer received its frames within a frame time of the speaker
        connected_from = max(v.video_frames[0].arrival for v in viewers) + 0.5
        speaker_frames = [f for f in speaker.video_frames if f.image is not None and connected_from - 1 <= f.arrival < t_kill + 1]
        for number, viewer in enumerate(viewers, 1):
            window = [f for f in viewer.video_frames if connected_from <= f.arrival < t_kill and f.image is not None]
            # enough frames to identify (a loaded shared machine delivers 13-25 fps here)
            assert len(window) >= 30, f"viewer {number} got {len(window)} frames in {t_kill - connected_from:.1f} s"
            match = same_frames(speaker_frames, window, mouth_box(server))
            print(f"WHEP viewer {number} vs speaker: {match}")
            # (a frame the in-process speaker peer dropped under CPU starvation pairs with nothing: a CI run with
            # the lite engine at 95-110 % of its budget paired 89 %; frames that are not the speaker's pair ~0)
            assert match["paired"] > 0.8, f"only {match['paired']:.0%} of viewer {number}'s frames are slots the speaker got"
            # the mouth moves during the speech: the right pairing stands out from one 2 slots off
            assert match["error"] < 0.7 * match["error_two_slots_off"], f"viewer {number}'s frames are not the speaker's: {match}"
            # every consumer's slot leaves at its due time (2-9 ms apart measured on a quiet machine). A
            # viewer fed late (a backed-up fan-out) would be behind: at most 100 ms. The speaker's own
            # receiver in this process may be starved for a few frames (seen: the viewer 102 ms ahead)
            assert -0.25 < match["lag_s"] < 0.1, f"viewer {number} receives {match['lag_s'] * 1000:.0f} ms after the speaker"
        # and the speech: the viewer's audio is the speech the speaker got back (20 ms envelopes)
        viewer_audio, speaker_audio = viewers[0].audio_samples(), speaker.audio_samples()
        assert np.abs(viewer_audio).max() > 0.05, "the viewer got no speech"
        # 3 s of the viewer's audio (1.5-4.5 s after it connected: the speech) slid along all the speaker got
        aligned, elsewhere = local_match(envelope(viewer_audio)[75:225], envelope(speaker_audio))
        assert_speech_matches(aligned, elsewhere, "the viewer's audio")
        print(f"WHEP viewer audio: correlation {aligned:.2f} aligned, {elsewhere:.2f} 0.5-1 s off")

        # -- the dead viewer does not slow the live one or the speaker
        for peer in (viewers[0], speaker):
            times = np.array([f.arrival for f in peer.video_frames])
            before, after = fps_between(times, t_kill - 4.0, t_kill), fps_between(times, t_kill + 1.0, t_end)
            # relative, 4 s windows: on a quiet machine both are ~25 (absolute rates are the
            # benchmark's job); on this shared 2-core box other jobs swing them +-20% (back-to-back
            # runs: 18 -> 22, 20.7 -> 15.6). A consumer that held up the fan-out would stop the
            # others altogether, far below this bound.
            print(f"fps {before:.1f} before, {after:.1f} after one viewer died")
            assert after >= 0.75 * before and after >= 8.0, f"fps {before:.1f} before, {after:.1f} after one viewer died"
        status, stats = await request("GET", f"{server.url}/sessions/{speaker.session_id}/stats")
        assert status == 200 and stats["state"] == "live"
        assert sum(o["type"] == "whep" for o in stats["outputs"]) >= 1

        # -- DELETE ends a viewer; a second DELETE is a clear 404
        status, body = await request("DELETE", f"{server.url}{viewers[0].location}")
        assert status == 200 and body["state"] == "closed", body
        status, body = await request("DELETE", f"{server.url}{viewers[0].location}")
        assert status == 404 and "unknown viewer" in body["error"]
    finally:
        for peer in (*viewers, speaker):
            await peer.close()


async def test_rtmp_push_into_nginx_comes_back_after_the_ingest_restarts(server, nginx, speech_with_silence_wav) -> None:
    speaker = await start_speaker(server, speech_with_silence_wav)
    try:
        status, body = await request("POST", f"{server.url}/sessions/{speaker.session_id}/outputs", {"type": "rtmp", "url": nginx.url("show")})
        assert status == 201, body
        output_id = body["output_id"]
        assert "show" not in body["url"], "the stream key is shown"
        await wait_for_state(server, speaker.session_id, output_id, ("live",), 10.0)

        probe = await asyncio.to_thread(probe_stream, nginx.url("show"), 3.0)
        streams = {s["codec_type"]: s for s in probe["streams"]}
        assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac", streams
        assert streams["video"]["r_frame_rate"] == "25/1", streams["video"]
        video_pts = sorted(float(p["pts_time"]) for p in probe["packets"] if p["stream_index"] == streams["video"]["index"])
        steps = np.diff(video_pts)
        # 3 s read: ~75 frames; ffprobe joins late on a busy machine (39 seen), the cadence is what counts
        assert len(video_pts) >= 25 and abs(float(np.median(steps)) - 0.04) < 0.002, f"{len(video_pts)} frames, steps {np.median(steps)}"
        keyframes = [float(p["pts_time"]) for p in probe["packets"] if p["stream_index"] == streams["video"]["index"] and "K" in p["flags"]]
        if len(keyframes) >= 2:
            assert np.allclose(np.diff(keyframes), 2.0, atol=0.05), keyframes

        # -- the ingest goes away and comes back: the push follows by itself
        nginx.stop()
        down = await wait_for_state(server, speaker.session_id, output_id, ("reconnecting",), 10.0)
        assert down["error"], down
        nginx.start()
        back = await wait_for_state(server, speaker.session_id, output_id, ("live",), 15.0)
        assert back["connects"] >= 2, back
        probe = await asyncio.to_thread(probe_stream, nginx.url("show"), 2.0)
        assert {s["codec_name"] for s in probe["streams"]} == {"h264", "aac"}

        status, stats = await request("GET", f"{server.url}/sessions/{speaker.session_id}/stats")
        assert stats["state"] == "live" and any(o["output_id"] == output_id for o in stats["outputs"])
        status, body = await request("DELETE", f"{server.url}/sessions/{speaker.session_id}/outputs/{output_id}")
        assert status == 200 and body["state"] == "stopped", body
    finally:
        await speaker.close()


def ffprobe_json(path, *args: str) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", *args, "-of", "json", str(path)], capture_output=True, timeout=60, check=True)
    return json.loads(out.stdout)


async def test_recording_is_an_mp4_with_the_sessions_frames_and_speech(server, speech_with_silence_wav, tmp_path) -> None:
    speaker = await start_speaker(server, speech_with_silence_wav)
    try:
        status, body = await request("POST", f"{server.url}/sessions/{speaker.session_id}/outputs", {"type": "record"})
        assert status == 201, body
        output_id = body["output_id"]
        await speaker.wait_sent(extra_s=0.5)  # the whole speech file
        status, body = await request("DELETE", f"{server.url}/sessions/{speaker.session_id}/outputs/{output_id}")
        assert status == 200 and body["state"] == "stopped", body
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/recordings/{output_id}") as resp:
            assert resp.status == 200 and resp.content_type == "video/mp4"
            (tmp_path / "rec.mp4").write_bytes(await resp.read())
    finally:
        await speaker.close()

    info = ffprobe_json(tmp_path / "rec.mp4", "-show_entries", "stream=codec_type,codec_name,r_frame_rate,start_time,duration,sample_rate")
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac", streams
    assert streams["video"]["r_frame_rate"] == "25/1"
    offset = float(streams["audio"]["start_time"]) - float(streams["video"]["start_time"])
    assert abs(offset) <= 0.040, f"A/V start offset {offset * 1000:.0f} ms"
    duration = float(streams["video"]["duration"])
    assert abs(float(streams["audio"]["duration"]) - duration) <= 0.1, streams
    assert duration >= 6.0, duration

    # the speech: the recording's audio follows the speaker's returned audio (20 ms RMS envelopes)
    # (3 s of what the speaker got back from 2 s on, the speech, slid along the recording: local, as
    # the recording fills slots a loaded server skipped with silence, which the receiver's audio lacks)
    correlation, elsewhere = local_match(envelope(speaker.audio_samples())[100:250], envelope(decode_audio_48k(tmp_path / "rec.mp4")))
    assert_speech_matches(correlation, elsewhere, "the recorded audio")
    # the frames: the session's portrait (compared with what the speaker received)
    recorded_frame = first_video_frame_gray(tmp_path / "rec.mp4")
    received = speaker.video_frames[len(speaker.video_frames) // 2].image
    assert recorded_frame.shape == received.shape, (recorded_frame.shape, received.shape)
    difference = float(np.abs(recorded_frame.astype(np.float32) - received.astype(np.float32)).mean())
    # the head and mouth move between the two moments (measured 6-7 grey levels); another picture
    # or a black frame differs by tens of levels
    assert difference < 15.0, f"the recording's frames are not the session's (mean abs difference {difference:.1f})"
    print(f"recording: {duration:.2f} s, A/V start offset {offset * 1000:.1f} ms, speech correlation {correlation:.2f}, "
          f"frame difference {difference:.1f}")


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of the shorter envelope with each same-length stretch of the longer one."""
    short, long = (a, b) if a.size <= b.size else (b, a)
    return np.array([np.corrcoef(short, long[lag : lag + short.size])[0, 1] for lag in range(long.size - short.size + 1)])


def local_match(short: np.ndarray, long: np.ndarray) -> tuple[float, float]:
    """Best correlation of ``short`` along ``long``, and the best 0.5-1 s (25-50 envelope steps) from it."""
    scores = correlations(short, long)
    peak = int(np.argmax(scores))
    elsewhere = max(scores[max(0, peak - 50) : max(0, peak - 25)].max(initial=-1), scores[peak + 25 : peak + 50].max(initial=-1))
    return float(scores[peak]), float(elsewhere)


def assert_speech_matches(aligned: float, elsewhere: float, what: str) -> None:
    # measured 0.75-0.97 aligned (a loaded machine drops a few audio packets at a receiver) and
    # below 0.4 half a second to a second away, where the words do not line up
    assert aligned > 0.6 and aligned - elsewhere > 0.25, (
        f"{what} is not the session's speech (correlation {aligned:.2f}, {elsewhere:.2f} 0.5-1 s off)")


def first_video_frame_gray(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="gray")
    raise AssertionError("no video frame in the recording")


def decode_audio_48k(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=48000)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for out in resampler.resample(frame)]
    return np.concatenate(chunks)


def envelope(samples: np.ndarray, frame: int = 960) -> np.ndarray:
    n = samples.size // frame
    return np.sqrt((samples[: n * frame].reshape(n, frame) ** 2).mean(axis=1))


async def test_bad_output_requests_get_clear_errors_and_the_session_keeps_running(server, speech_with_silence_wav) -> None:
    speaker = await start_speaker(server, speech_with_silence_wav)
    sid = speaker.session_id
    base = f"{server.url}/sessions/{sid}"
    try:
        cases = [
            ("POST", f"{server.url}/sessions/nosuchsession/outputs", {"type": "record"}, 404, "unknown session"),
            ("GET", f"{server.url}/sessions/nosuchsession/outputs", None, 404, "unknown session"),
            ("DELETE", f"{base}/outputs/0123456789abcdef", None, 404, "unknown output"),
            ("DELETE", f"{base}/whep/0123456789abcdef", None, 404, "unknown viewer"),
            ("GET", f"{server.url}/recordings/0123456789abcdef", None, 404, "unknown recording"),
            ("GET", f"{server.url}/recordings/..%2F..%2Fetc%2Fpasswd", None, 404, "unknown recording"),
            ("POST", f"{base}/outputs", {"type": "rtmp", "url": "rtmp://no-such-host.invalid/live/key"}, 422, "does not resolve"),
            ("POST", f"{base}/outputs", {"type": "rtmp", "url": "http://127.0.0.1/live/key"}, 400, "scheme"),
            ("POST", f"{base}/outputs", {"type": "rtmp", "url": "rtmp://127.0.0.1"}, 400, "stream key"),
            ("POST", f"{base}/outputs", {"type": "rtmp"}, 400, "'url'"),
            ("POST", f"{base}/outputs", {"type": "srt", "url": "rtmp://127.0.0.1/live/key"}, 400, "srt:// URL"),
            ("POST", f"{base}/outputs", {"type": "hologram"}, 400, "unknown output type"),
            ("POST", f"{base}/outputs", ["record"], 400, "JSON object"),
            ("POST", f"{base}/outputs", {"type": "record", "path": "/etc/cron.d/x"}, 400, "cannot be chosen"),
            ("POST", f"{base}/outputs", {"type": "virtual_camera", "device": 7}, 400, "'device'"),
            # no /dev/video here: the camera's own reason (or the missing package) comes back
            ("POST", f"{base}/outputs", {"type": "virtual_camera"}, 409, "virtual camera"),
        ]
        for method, url, body, status, words in cases:
            got_status, got = await request(method, url, body)
            assert got_status == status and words in got["error"], (method, url, body, got_status, got)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/whep", data="v=0\r\nnot sdp", headers={"Content-Type": "application/sdp"}) as resp:
                assert resp.status == 400 and "malformed" in (await resp.json())["error"]
            async with http.post(f"{base}/whep", json={"sdp": "x"}) as resp:
                assert resp.status == 415
            async with http.post(f"{base}/outputs", data="{not json", headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400 and "JSON" in (await resp.json())["error"]
        # the speaker's session never noticed
        frames_before = len(speaker.video_frames)
        await asyncio.sleep(1.0)
        assert len(speaker.video_frames) - frames_before >= 18
        status, stats = await request("GET", f"{base}/stats")
        assert status == 200 and stats["state"] == "live" and stats.get("outputs", []) == []
    finally:
        await speaker.close()


async def test_output_routes_need_the_access_token(lite_engine) -> None:
    config = ServerConfig(port=0)
    config.auth.tokens = ["outputs-test-token"]
    async with serve_in_process(config, engine=lite_engine) as running, aiohttp.ClientSession() as http:
        for method, path in [("GET", "/sessions/abc/view"), ("POST", "/sessions/abc/whep"), ("POST", "/sessions/abc/outputs"),
                             ("GET", "/sessions/abc/outputs"), ("GET", "/recordings/0123456789abcdef")]:
            async with http.request(method, running.url + path) as resp:
                assert resp.status == 401, (method, path, resp.status)
        # the viewer page takes the token from its URL (an OBS Browser Source cannot add a header)
        async with http.get(f"{running.url}/sessions/abc/view?token=outputs-test-token") as resp:
            assert resp.status == 404 and "unknown session" in (await resp.json())["error"]
        async with http.get(f"{running.url}/static/view.js") as resp:  # the page's script is open
            assert resp.status == 200
        # 'latest' (the caller's newest session): the page loads and waits; WHEP says there is none yet
        async with http.get(f"{running.url}/sessions/latest/view?token=outputs-test-token") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
        async with http.post(f"{running.url}/sessions/latest/whep?token=outputs-test-token", data="v=0\r\n",
                             headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 404 and "no live session" in (await resp.json())["error"]
