"""Speech pushed over the audio WebSocket into a session an aiortc peer watches (issue 11 points 1, 6).

The peer opens its session with ``"audio_source": "websocket"`` (its own microphone is ignored), a
WebSocket client pushes espeak-ng speech 3x faster than real time, and what the peer receives is
checked: 25 fps video, a mouth that moves with the speech and rests in the pauses, the speech
itself in its audio, events in order with positions that match what was pushed; an interrupt; a
portrait change with PATCH. Bounds are loose where a shared 2-core CPU makes timing noisy.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio
from yarl import URL

from live_avatar.core.engines import load_engine
from live_avatar.core.portraits import default_portrait
from live_avatar.server.config import ServerConfig
from tests.support.inprocess import heap_frozen_as_serve_does, serve_in_process
from tests.support.live_checks import (
    assert_json_error,
    offer_sdp,
    request,
    upload_form,
    wait_until_streaming,
)
from tests.support.loopback_analysis import mouth_activity
from tests.support.loopback_peer import LoopbackPeer, ReceivedVideoFrame
from tests.support.speech import espeak_speech, trim_silence
from tests.support.speech_socket import SpeechSocket

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

RATE = 24000  # the pushed PCM's rate: resampled to the engine's 16 kHz by the server
MOUTH_LANDMARKS = [61, 291, 0, 17, 13, 14, 78, 308]  # MediaPipe FaceMesh lips
ENV_S = 0.02  # audio envelopes in 20 ms frames


@pytest.fixture(scope="module")
def utterances() -> tuple[np.ndarray, np.ndarray]:
    first = trim_silence(espeak_speech("Hello everyone, welcome to the stream.", RATE), RATE)
    second = trim_silence(espeak_speech("Today we talk about real time avatars and how they speak.", RATE), RATE)
    return first, second


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    config = ServerConfig(port=0)
    config.audio_socket.max_buffered_s = 20.0  # the bad-input test overfills it
    # 256x256: a quarter of the default's pixels to render, encode and decode, so that these timing
    # checks hold on a CPU shared with other jobs (the mouth and face checks do not need more)
    engine = load_engine("lite", size="256*256")
    engine.capacity = 4
    async with serve_in_process(config, engine=engine) as running:
        with heap_frozen_as_serve_does():
            yield running


def mouth_box(avatar) -> tuple[int, int, int, int]:
    points = avatar.rig.landmarks[MOUTH_LANDMARKS]
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    pad = 0.25 * (x1 - x0)
    return int(x0 - pad), int(y0 - pad), int(x1 + pad), int(y1 + 2 * pad)


async def watch_pushed_session(server) -> LoopbackPeer:
    """An aiortc peer whose session takes its speech from the WebSocket; it sends only silence."""
    peer = LoopbackPeer(np.zeros(48000, np.float32), layout="sendrecv")
    try:
        await peer.connect_offer(server.url, options={"audio_source": "websocket"})
        assert peer.offer_answer["audio_ws"] == f"/sessions/{peer.session_id}/audio"
        await wait_until_streaming(peer, frames=25)
    except BaseException:
        await peer.close()
        raise
    return peer


def envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    hop = int(rate * ENV_S)
    n = samples.size // hop
    return np.sqrt((samples[: n * hop].reshape(n, hop).astype(np.float64) ** 2).mean(axis=1) + 1e-12)


def find_in(received_env: np.ndarray, reference_env: np.ndarray) -> tuple[int, float]:
    """Offset (in envelope frames) where ``reference_env`` best matches ``received_env``, and the
    normalised correlation there."""
    ref = reference_env - reference_env.mean()
    best = (0, -1.0)
    for offset in range(received_env.size - reference_env.size + 1):
        window = received_env[offset : offset + reference_env.size]
        window = window - window.mean()
        denom = np.linalg.norm(window) * np.linalg.norm(ref)
        corr = float(window @ ref / denom) if denom > 0 else 0.0
        if corr > best[1]:
            best = (offset, corr)
    return best


def find_pieces(received_env: np.ndarray, reference_env: np.ndarray, start: int = 0, piece_s: float = 0.6,
                slack: int = 5) -> list[tuple[int, float]]:
    """Where each ``piece_s`` piece of the reference is in the received stream (from ``start``):
    the first piece anywhere after it, each next one near where the previous one ended. Piece by
    piece, so that a 20 ms hole a starved CPU left in the stream does not hide the match."""
    n = int(piece_s / ENV_S)
    pieces = [reference_env[i : i + n] for i in range(0, reference_env.size - n + 1, n)]
    offset, corr = find_in(received_env[start:], pieces[0])
    found = [(start + offset, corr)]
    for piece in pieces[1:]:
        expected = found[-1][0] + n
        lo = max(0, expected - slack)
        offset, corr = find_in(received_env[lo : expected + n + slack], piece)
        found.append((lo + offset, corr))
    return found


def frames_between(peer: LoopbackPeer, t0: float, t1: float) -> list[ReceivedVideoFrame]:
    return [f for f in peer.video_frames if t0 <= f.arrival < t1 and f.image is not None]


def received_fps(peer, t0: float, t1: float) -> float:
    """Video frames a peer received per second between t0 and t1 (first to last arrival in the window)."""
    arrivals = np.array([f.arrival for f in peer.video_frames])
    span = arrivals[(arrivals > t0) & (arrivals < t1)]
    return (span.size - 1) / (span[-1] - span[0])


def mouth_activity_between(peer, box: tuple[int, int, int, int], t0: float, t1: float) -> np.ndarray:
    """mouth_activity of the frames a peer received between t0 and t1 (without the first frame's 0)."""
    return mouth_activity([f.image for f in frames_between(peer, t0, t1)], box)[1:]


class SlotRecorder:
    """Every slot the session's playout publishes (a fan-out consumer inside the server process):
    what every output plays, before any network or receiving CPU can drop a piece of it."""

    def __init__(self, session) -> None:
        self.slots: list[tuple[float, object]] = []  # (time received, OutputSlot)
        self._sub = session.fanout.subscribe("test-recorder", maxsize=25 * 120)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while (slot := await self._sub.get()) is not None:
            self.slots.append((time.monotonic(), slot))

    def audio(self) -> np.ndarray:
        """The timeline's audio as played: generated frames in order (a repeated frame, shown while
        a late one was awaited, carries silence and is left out)."""
        return np.concatenate([slot.audio for _, slot in self.slots if not slot.repeated]).astype(np.float32) / 32768.0

    def grey_frames(self, t0: float, t1: float) -> list[tuple[float, np.ndarray]]:
        """(due time, grey image) of the slots due in [t0, t1)."""
        return [(slot.due, cv2.cvtColor(slot.frame, cv2.COLOR_RGB2GRAY)) for _, slot in self.slots if t0 <= slot.due < t1]

    def close(self) -> None:
        self._sub.close()
        self._task.cancel()


def assert_every_slot(recorder: SlotRecorder, t0: float, t1: float) -> None:
    """The playout published a slot every 1/25 s in [t0, t1), nearly all with a new frame. A few
    may be missing: when the OS does not run this process for a while (this machine's 2 cores are
    shared with other jobs; stalls of 0.2-0.5 s were seen at a load average of 6-7) the playout
    skips the slots that passed. 5% of them (+2) is allowed, no more."""
    played = [slot for _, slot in recorder.slots if t0 <= slot.due < t1]
    expected = round(25 * (t1 - t0))
    holes = [(round(a.due - t0, 2), b.slot - a.slot - 1) for a, b in itertools.pairwise(played) if b.slot - a.slot > 1]
    missing = expected - len(played)
    assert missing <= 0.05 * expected + 2, f"{missing} of {expected} slots missing: (s after the start, slots) {holes}"
    assert sum(slot.repeated for slot in played) <= 5, "frames were late"


def check_utterance_events(events: list[dict], pushed_s: float) -> None:
    """started, positions (increasing, within the utterance), finished at the whole length."""
    kinds = [e["type"] for e in events]
    assert kinds[0] == "speaking_started" and kinds[-1] == "speaking_finished", kinds
    assert set(kinds[1:-1]) <= {"playback_position"}, kinds
    positions = [e["position_s"] for e in events]
    assert all(b >= a for a, b in itertools.pairwise(positions)), positions
    assert 0.0 <= positions[0] <= 0.1, positions
    assert events[-1]["interrupted"] is False
    assert abs(events[-1]["position_s"] - pushed_s) <= 0.03, (events[-1], pushed_s)


async def test_speech_pushed_three_times_faster(server, utterances) -> None:
    first, second = utterances
    peer = await watch_pushed_session(server)
    recorder = SlotRecorder(server.state["sessions"].get(peer.session_id))
    socket = await SpeechSocket.connect(server.url, peer.session_id)
    try:
        await asyncio.sleep(1.0)  # resting face before any speech
        await socket.start(RATE)
        pushed_at = await socket.push(first, RATE, speed=3.0)
        push_took = time.monotonic() - pushed_at
        await socket.send({"type": "end_of_speech"})
        finished1 = await socket.wait_for("speaking_finished")
        n1 = len(socket.events)
        await asyncio.sleep(1.5)  # a pause: the mouth rests
        await socket.push(second, RATE, speed=3.0)
        await socket.send({"type": "end_of_speech"})
        finished2 = await socket.wait_for("speaking_finished", after=n1)
        await asyncio.sleep(0.5)
        stats = (await request(server.url, "GET", f"/sessions/{peer.session_id}/stats")).body
    finally:
        recorder.close()
        await socket.close()
        await peer.close()

    print({k: stats[k] for k in ("frames_sent", "frames_repeated", "frames_dropped", "slots_skipped", "latency_trims")}, stats["stream"])
    # -- pushed faster than real time, played at real time
    len1, len2 = first.size / RATE, second.size / RATE
    assert push_took < 0.6 * len1, f"pushing {len1:.2f} s of speech took {push_took:.2f} s"
    events1 = [e.body for e in socket.events[:n1]]
    events2 = [e.body for e in socket.events[n1:]]
    check_utterance_events(events1, len1)
    check_utterance_events(events2, len2)
    started1, started2 = socket.events[0], socket.events[n1]
    for started, finished, length in ((started1, finished1, len1), (started2, finished2, len2)):
        played_in = finished.arrival - started.arrival
        assert abs(played_in - length) < 0.35, f"{length:.2f} s of speech played in {played_in:.2f} s"
        speaking = [e.arrival for e in socket.events if started.arrival <= e.arrival <= finished.arrival]
        assert max(np.diff(speaking)) <= 0.55, "playback_position must come at least every 0.5 s"
    assert stats["speech_input"]["pushed_s"] == pytest.approx(len1 + len2, abs=0.01)
    assert stats["speech_input"]["refused_messages"] == 0 and stats["stream"]["mode"] == "buffered"

    # -- 25 fps video without gaps: every slot played, and the peer got about that many frames
    # (arrival times are looser: a CPU shared with other jobs delays the receiving side now and then)
    assert_every_slot(recorder, started1.arrival - 1.0, finished2.arrival)
    fps = received_fps(peer, started1.arrival - 1.0, finished2.arrival)
    assert 20.0 <= fps <= 30.0, f"received {fps:.1f} fps"

    # -- the mouth moves with the speech and rests in the pause (and before it)
    box = mouth_box(server.state["avatars"].get(None))

    def activity(t0: float, t1: float) -> np.ndarray:
        return mouth_activity_between(peer, box, t0, t1)

    talking = np.concatenate([activity(started1.arrival + 0.2, finished1.arrival - 0.2),
                              activity(started2.arrival + 0.2, finished2.arrival - 0.2)])
    pause = activity(finished1.arrival + 0.3, started2.arrival - 0.1)
    before = activity(started1.arrival - 0.9, started1.arrival - 0.1)
    print(f"mouth activity: talking {talking.mean():.2f}, pause {pause.mean():.2f}, before {before.mean():.2f}; fps {fps:.1f}")
    assert talking.size > 50 and pause.size > 15 and before.size > 10
    assert talking.mean() > 2.5 * pause.mean() and talking.mean() > 2.5 * before.mean()

    # -- what the session played is the pushed speech, whole and in order, with the pause between
    played_env = envelope(recorder.audio(), 48000)
    pieces1 = find_pieces(played_env, envelope(first, RATE))
    pieces2 = find_pieces(played_env, envelope(second, RATE), start=pieces1[-1][0])
    corrs = np.array([c for _, c in pieces1 + pieces2])
    gap_s = (pieces2[0][0] - pieces1[0][0]) * ENV_S - len1
    print(f"played speech: piece correlations {np.round(corrs, 2).tolist()}, pause {gap_s:.2f} s")
    assert corrs.min() > 0.9, corrs
    assert 1.2 < gap_s < 2.5, gap_s  # the client's 1.5 s pause (+ the event's and the push's latency)
    assert played_env[pieces1[0][0] + int(len1 / ENV_S) + 5 : pieces2[0][0] - 5].max() < 0.01, "the pause is not silent"

    # -- and the peer heard it. Looser: on a starved CPU the outgoing track skips stale slots (it
    # catches up rather than stay late, tracks.py), which leaves holes in what the peer gets.
    received_env = envelope(peer.audio_samples(), 48000)
    heard = find_pieces(received_env, envelope(first, RATE), slack=25)
    heard += find_pieces(received_env, envelope(second, RATE), start=heard[-1][0], slack=25)
    heard_corrs = np.array([c for _, c in heard])
    print(f"heard speech: piece correlations {np.round(heard_corrs, 2).tolist()}")
    assert (heard_corrs > 0.7).mean() >= 0.7, heard_corrs

async def test_tts_session_without_webrtc_input_seen_through_whep(server, utterances) -> None:
    """The TTS path end to end: POST /sessions (no WebRTC input at all), speech pushed 3x faster than
    real time over its audio WebSocket, and an aiortc WHEP viewer of the session: ~25 fps video whose
    mouth moves with the speech and rests before it, the speech in its audio, the events in order."""
    from tests.support.whep_viewer import WhepViewerPeer

    first, _ = utterances
    created = await request(server.url, "POST", "/sessions", json={})
    assert created.status == 201, created.body
    session_id = created.body["session_id"]
    assert created.body["whep"] == f"/sessions/{session_id}/whep"
    viewer = WhepViewerPeer(frame_format="gray")
    socket = None
    try:
        await viewer.watch(server.url, session_id)
        await wait_until_streaming(viewer, frames=25)  # a picture of the idle session
        socket = await SpeechSocket.connect(server.url, session_id)
        await asyncio.sleep(1.0)  # the resting face
        await socket.start(RATE)
        await socket.push(first, RATE, speed=3.0)
        await socket.send({"type": "end_of_speech"})
        finished = await socket.wait_for("speaking_finished")
        started = socket.events[0]
        await asyncio.sleep(0.3)
    finally:
        if socket is not None:
            await socket.close()
        await viewer.close()
        await request(server.url, "DELETE", f"/sessions/{session_id}")

    check_utterance_events([e.body for e in socket.events if e.arrival <= finished.arrival], first.size / RATE)
    fps = received_fps(viewer, started.arrival - 1.0, finished.arrival)
    assert 20.0 <= fps <= 30.0, f"the WHEP viewer received {fps:.1f} fps"
    box = mouth_box(server.state["avatars"].get(None))

    def activity(t0: float, t1: float) -> np.ndarray:
        return mouth_activity_between(viewer, box, t0, t1)

    talking = activity(started.arrival + 0.2, finished.arrival - 0.2)
    before = activity(started.arrival - 0.9, started.arrival - 0.1)
    print(f"whep viewer: {fps:.1f} fps; mouth activity talking {talking.mean():.2f}, before {before.mean():.2f}")
    assert talking.size > 25 and before.size > 10
    assert talking.mean() > 2.5 * before.mean()
    heard = find_pieces(envelope(viewer.audio_samples(), 48000), envelope(first, RATE), slack=25)
    heard_corrs = np.array([c for _, c in heard])
    assert (heard_corrs > 0.7).mean() >= 0.7, heard_corrs


def mouth_opening(frames: list[np.ndarray], rest: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """How open the mouth is in each grey frame: the share of the mouth region darker than anything
    in it at rest (the open mouth's cavity is the darkest thing there; moving the head is not)."""
    x0, y0, x1, y1 = box
    darkest_at_rest = float(np.percentile(rest[y0:y1, x0:x1], 1)) - 8.0
    return np.array([float((frame[y0:y1, x0:x1] < darkest_at_rest).mean()) for frame in frames])


async def test_interrupt_mid_utterance(server, utterances) -> None:
    first, second = utterances
    speech = np.concatenate([second, first])  # ~6 s: interrupted after ~2 s
    peer = await watch_pushed_session(server)
    recorder = SlotRecorder(server.state["sessions"].get(peer.session_id))
    socket = await SpeechSocket.connect(server.url, peer.session_id)
    try:
        await asyncio.sleep(1.0)
        rest_frames = [f.image for f in frames_between(peer, time.monotonic() - 0.8, time.monotonic())]
        await socket.start(RATE)
        await socket.push(speech, RATE, speed=3.0)
        started = await socket.wait_for("speaking_started")
        await asyncio.sleep(max(0.0, started.arrival + 2.0 - time.monotonic()))
        interrupted_at = await socket.send({"type": "interrupt"})
        finished = await socket.wait_for("speaking_finished")
        await asyncio.sleep(1.0)
        stats = (await request(server.url, "GET", f"/sessions/{peer.session_id}/stats")).body
    finally:
        recorder.close()
        await socket.close()
        await peer.close()

    assert finished.body["interrupted"] is True, finished.body
    position = finished.body["position_s"]
    assert 1.0 < position < 2.4, position  # 2 s after speaking_started (less if a starved CPU repeated frames)
    assert finished.arrival - interrupted_at < 0.2, "speaking_finished must answer the interrupt at once"
    assert stats["speech_input"]["utterances_queued"] == 0 and stats["speech_input"]["queued_s"] == 0
    assert stats["state"] == "live"

    # -- the position is what was played: the speech up to it, silence from just after it
    played_env = envelope(recorder.audio(), 48000)
    reference_env = envelope(speech, RATE)
    start, corr = find_in(played_env, reference_env[: int(1.0 / ENV_S)])
    assert corr > 0.9, corr
    played = played_env[start : start + reference_env.size]
    cut = round(position / ENV_S)
    loud = reference_env > 0.02
    before_cut = slice(0, cut - int(0.1 / ENV_S))
    assert (played[before_cut][loud[before_cut]] > 0.005).mean() > 0.95, "speech before the position was not played"
    after_cut = slice(cut + int(0.1 / ENV_S), cut + int(0.6 / ENV_S))
    assert loud[after_cut].sum() >= 5, "the test should cut through speech"
    assert played[after_cut].max() < 0.005, f"speech was played more than 100 ms after position_s={position}"
    # the peer hears silence from then on too
    late = [a.samples for a in peer.audio_frames if a.arrival > interrupted_at + 0.3]
    assert late and np.sqrt(np.mean(np.concatenate(late) ** 2)) < 0.005, "the peer still hears speech after the interrupt"

    # -- the mouth closes within 200 ms of the interrupt: in what the session played (slot due
    # times), and, looser, at the peer (its frames arrive late when the shared CPU stalls)
    box = mouth_box(server.state["avatars"].get(None))
    rest = np.median(np.stack(rest_frames), axis=0)
    talking = mouth_opening([g for _, g in recorder.grey_frames(started.arrival + 0.3, interrupted_at)], rest, box)
    at_rest = mouth_opening(rest_frames, rest, box)
    near = recorder.grey_frames(interrupted_at - 0.2, interrupted_at + 0.4)
    trace = mouth_opening([g for _, g in near], rest, box)
    closed = at_rest.max() + 0.2 * (np.percentile(talking, 90) - at_rest.max())
    print(f"opening: talking p90 {np.percentile(talking, 90):.3f}, rest max {at_rest.max():.3f}, closed below {closed:.3f}; "
          f"around the interrupt {[(round(due - interrupted_at, 2), round(v, 3)) for (due, _), v in zip(near, trace, strict=True)]}")
    assert np.percentile(talking, 90) > at_rest.max() + 0.05
    after = np.array([v for (due, _), v in zip(near, trace, strict=True) if due >= interrupted_at + 0.2])
    assert after.size >= 4 and after.max() <= closed, (after, closed)
    heard_after = [f.image for f in frames_between(peer, interrupted_at + 0.5, interrupted_at + 1.0)]
    assert heard_after and mouth_opening(heard_after, rest, box).max() <= closed


def other_portrait() -> np.ndarray:
    """Another face for the change: the built-in portrait mirrored, its red and blue swapped."""
    return np.ascontiguousarray(default_portrait()[:, ::-1, ::-1])


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


async def test_patch_changes_the_face_without_a_gap(server) -> None:
    engine = server.state["engine"]
    old_still = cv2.cvtColor(server.state["avatars"].get(None).frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    new_still = cv2.cvtColor(engine.prepare_avatar(other_portrait()).frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:  # one owner
        upload = await request(server.url, "POST", "/avatars", http=browser, data=upload_form(png(other_portrait())))
        assert upload.status == 201, upload.body
        new_id = upload.body["avatar_id"]
        peer = await watch_pushed_session(server)
        recorder = SlotRecorder(server.state["sessions"].get(peer.session_id))
        owner = browser.cookie_jar.filter_cookies(URL(server.url))["avatar_owner"].value  # the socket is the same browser
        socket = await SpeechSocket.connect(server.url, peer.session_id, headers={"Cookie": f"avatar_owner={owner}"})
        try:
            await asyncio.sleep(1.0)
            patched_at = time.monotonic()
            answer = await request(server.url, "PATCH", f"/sessions/{peer.session_id}", http=browser, json={"avatar_id": new_id})
            assert answer.status == 202, answer.body
            assert answer.body["pending"] == {"avatar_id": new_id, "prompt": None}
            updated = await socket.wait_for("updated")
            await asyncio.sleep(max(0.0, patched_at + 2.0 - time.monotonic()))
            stats = (await request(server.url, "GET", f"/sessions/{peer.session_id}/stats")).body
            # the same change as a WebSocket message: the prompt this time (the lite engine keeps it for the stats)
            n = len(socket.events)
            await socket.send({"type": "update", "prompt": "a calm host"})
            prompt_updated = await socket.wait_for("updated", after=n)
            await socket.send({"type": "update", "avatar_id": "nope"})
            refused = await socket.wait_for("error", after=n)
        finally:
            recorder.close()
            await socket.close()
            await peer.close()

    assert updated.body == {"type": "updated", "avatar_id": new_id, "prompt": None}
    assert updated.arrival - patched_at < 1.0
    assert stats["avatar"]["avatar_id"] == new_id and stats["avatar"]["pending"] is None
    assert stats["avatar"]["changes_applied"] == 1
    assert prompt_updated.body == {"type": "updated", "avatar_id": new_id, "prompt": "a calm host"}
    assert "unknown avatar_id" in refused.body["error"]

    def nearer_new(image: np.ndarray) -> bool:
        return np.abs(image - new_still).mean() < np.abs(image - old_still).mean()

    # -- what the session played: every slot, the old face until the PATCH, the new one within 1 s
    assert_every_slot(recorder, patched_at - 1.0, patched_at + 2.0)
    played = [slot for _, slot in recorder.slots if patched_at - 1.0 <= slot.due < patched_at + 2.0]
    new_face = np.array([nearer_new(cv2.cvtColor(slot.frame, cv2.COLOR_RGB2GRAY)) for slot in played])
    dues = np.array([slot.due for slot in played])
    switched = dues[new_face].min() - patched_at
    assert not new_face[dues < patched_at].any() and new_face[dues >= patched_at + switched].all()
    assert switched < 1.0, switched

    # -- and the peer got it: the new face after one second, about 25 fps (arrival times: looser,
    # a CPU shared with other jobs delays the receiving side now and then)
    frames = frames_between(peer, patched_at - 1.0, patched_at + 2.0)
    arrivals = np.array([f.arrival for f in frames])
    assert all(nearer_new(f.image) for f in frames if f.arrival > patched_at + 1.0)
    fps = (arrivals.size - 1) / (arrivals[-1] - arrivals[0])
    print(f"new face played {switched * 1000:.0f} ms after the PATCH; peer fps {fps:.1f}, largest gap {np.diff(arrivals).max() * 1000:.0f} ms")
    assert 18.0 <= fps <= 30.0, fps


async def test_bad_input_gets_clear_errors_and_the_session_keeps_running(server) -> None:
    url = server.url
    created = await request(url, "POST", "/sessions", json={})
    assert created.status == 201, created.body
    sid = created.body["session_id"]
    assert created.body == {"session_id": sid, "audio_ws": f"/sessions/{sid}/audio",
                            "whep": f"/sessions/{sid}/whep", "view": f"/sessions/{sid}/view"}
    assert created.headers["Location"] == f"/sessions/{sid}"
    await asyncio.sleep(1.0)  # no consumer, no socket: it generates all the same

    # -- HTTP: unknown ids, bad bodies
    for method, path in (("POST", "/sessions/nope/interrupt"), ("PATCH", "/sessions/nope"), ("DELETE", "/sessions/nope"),
                         ("GET", "/sessions/nope/audio"), ("GET", "/sessions/nope/stats")):
        kwargs = {"json": {"prompt": "x"}} if method == "PATCH" else {}
        assert_json_error(await request(url, method, path, **kwargs), 404, "unknown session")
    assert_json_error(await request(url, "POST", "/sessions", data="{}", headers={"Content-Type": "text/plain"}), 415, "application/json")
    assert_json_error(await request(url, "POST", "/sessions", data="{oops", headers={"Content-Type": "application/json"}), 400, "JSON")
    assert_json_error(await request(url, "POST", "/sessions", json={"avatar_id": "nope"}), 404, "unknown avatar_id")
    assert_json_error(await request(url, "POST", "/sessions", json={"prompt": 7}), 400, "prompt")
    assert_json_error(await request(url, "PATCH", f"/sessions/{sid}", data="[1", headers={"Content-Type": "application/json"}), 400, "JSON")
    assert_json_error(await request(url, "PATCH", f"/sessions/{sid}", json={}), 400, "nothing to change")
    assert_json_error(await request(url, "PATCH", f"/sessions/{sid}", json={"avatar_id": 3}), 400, "avatar_id")
    assert_json_error(await request(url, "PATCH", f"/sessions/{sid}", json={"avatar_id": "nope"}), 404, "unknown avatar_id")
    assert_json_error(await request(url, "GET", f"/sessions/{sid}/audio"), 426, "WebSocket")
    assert_json_error(await request(url, "POST", "/offer", json={"sdp": "v=0", "audio_source": "tv"}), 400, "audio_source")
    assert_json_error(await request(url, "POST", "/whip?audio_source=tv", data="v=0", headers={"Content-Type": "application/sdp"}),
                      400, "audio_source")

    # -- a receive-only offer is fine when the speech comes from the socket (a mic session needs a mic)
    video_only = await offer_sdp(audio=False, video=True)
    assert_json_error(await request(url, "POST", "/offer", json={"sdp": video_only, "type": "offer"}), 400, "audio")
    viewer = await request(url, "POST", "/offer", json={"sdp": video_only, "type": "offer", "audio_source": "websocket"})
    assert viewer.status == 200 and viewer.body["audio_ws"] == f"/sessions/{viewer.body['session_id']}/audio", viewer.body
    assert (await request(url, "DELETE", f"/sessions/{viewer.body['session_id']}")).status == 200

    socket = await SpeechSocket.connect(url, sid)
    try:
        # -- a second socket, a socket from another site
        with pytest.raises(aiohttp.WSServerHandshakeError) as second:
            await SpeechSocket.connect(url, sid)
        assert second.value.status == 409
        with pytest.raises(aiohttp.WSServerHandshakeError) as foreign:
            await SpeechSocket.connect(url, sid, origin="http://evil.example")
        assert foreign.value.status == 403

        # -- bad messages: an error event each, nothing queued, the socket stays open
        bad = [
            (b"\x01\x00" * 100, "before audio"),
            ({"type": "start", "sample_rate": 22050, "format": "s16le"}, "sample_rate"),
            ({"type": "start", "sample_rate": 16000, "format": "f32le"}, "format"),
            ("{not json", "JSON"),
            ({"type": "sing"}, "unknown message type"),
            ({"type": "start", "sample_rate": 16000}, None),  # valid (s16le is the default format)
            (b"\x01\x00\x02", "not whole s16le samples"),
        ]
        for message, words in bad:
            n = len(socket.events)
            if isinstance(message, bytes):
                await socket.ws.send_bytes(message)
            elif isinstance(message, str):
                await socket.ws.send_str(message)
            else:
                await socket.send(message)
            if words is None:
                continue
            error = await socket.wait_for("error", after=n, timeout=5)
            assert words.lower() in error.body["error"].lower(), (words, error.body)
        assert not socket.ws.closed

        # -- more than audio_socket.max_buffered_s (20 s here): refused with an error, not dropped silently
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 3) / 16000)).astype(np.float32)
        n = len(socket.events)
        for _ in range(8):  # 24 s at once, in 3 s messages: 18 s fit for sure, 21 s not
            await socket.push(tone, 16000, speed=1000.0, chunk_s=3.0)
        full = await socket.wait_for("error", after=n, timeout=5)
        assert "buffer full" in full.body["error"] and "not queued" in full.body["error"], full.body
        await socket.wait_for("speaking_started", after=n)
        n = len(socket.events)
        answer = await request(url, "POST", f"/sessions/{sid}/interrupt")  # HTTP interrupt: the socket hears it
        assert answer.status == 200, answer.body
        finished = await socket.wait_for("speaking_finished", after=n, timeout=5)
        assert finished.body["interrupted"] is True and finished.body["position_s"] < 2.0
        await asyncio.sleep(1.0)
        stats = (await request(url, "GET", f"/sessions/{sid}/stats")).body
        speech = stats["speech_input"]
        pushed = round(speech["pushed_s"] / 3)
        assert pushed in (6, 7) and speech["pushed_s"] == pytest.approx(3 * pushed, abs=0.01), speech
        assert speech["refused_messages"] == 1 + 8 - pushed, speech  # the odd-length message and the full ones
    finally:
        await socket.close()

    # -- the session went on through all of it
    assert stats["state"] == "live" and stats["fps"] is not None and 20 <= stats["fps"] <= 30, stats["fps"]
    frames = stats["frames_sent"] + stats["frames_repeated"]
    await asyncio.sleep(1.0)
    later = (await request(url, "GET", f"/sessions/{sid}/stats")).body
    assert later["frames_sent"] + later["frames_repeated"] - frames >= 20  # real time with no consumer at all
    assert later["speech_input"]["socket_connected"] is False
    socket = await SpeechSocket.connect(url, sid)  # a new socket may connect once the first is gone
    try:
        assert (await request(url, "DELETE", f"/sessions/{sid}")).status == 200
        ended = await socket.wait_for("error", timeout=5)
        assert "the session ended" in ended.body["error"]
        await asyncio.wait_for(socket._reader, 5)  # ... and the server closes the socket
        assert socket.ws.closed and socket.ws.close_code == 1001
    finally:
        await socket.close()
    assert (await request(url, "GET", f"/sessions/{sid}/stats")).status == 404


async def test_access_rules_limits_and_idle_end(server) -> None:
    """Tokens (Bearer or ?token= on the socket), the per-client session limit, the end of a session
    nobody feeds."""
    config = ServerConfig(port=0)
    config.auth.tokens = ["s3cret"]
    config.limits.max_sessions_per_client = 2
    config.audio_socket.idle_timeout_s = 1.5
    async with serve_in_process(config, engine=server.state["engine"]) as guarded:
        url, auth = guarded.url, {"Authorization": "Bearer s3cret"}
        assert_json_error(await request(url, "POST", "/sessions", json={}), 401, "token")
        first = await request(url, "POST", "/sessions", json={}, headers=auth)
        second = await request(url, "POST", "/sessions", json={}, headers=auth)
        assert first.status == 201 and second.status == 201, (first.body, second.body)
        assert_json_error(await request(url, "POST", "/sessions", json={}, headers=auth), 429, "sessions")
        sid = first.body["session_id"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await SpeechSocket.connect(url, sid)
        assert refused.value.status == 401
        assert_json_error(await request(url, "PATCH", f"/sessions/{sid}", json={"prompt": "x"}), 401, "token")
        socket = await SpeechSocket.connect(url, sid, params={"token": "s3cret"})  # a browser's WebSocket cannot set headers
        try:
            await asyncio.sleep(2.5)  # past idle_timeout_s: the one with a socket lives, the other ends
            assert (await request(url, "GET", f"/sessions/{sid}/stats", headers=auth)).body["state"] == "live"
            assert_json_error(await request(url, "GET", f"/sessions/{second.body['session_id']}/stats", headers=auth), 404, "unknown")
        finally:
            await socket.close()
        await asyncio.sleep(2.5)  # the socket is gone: the session ends too
        assert_json_error(await request(url, "GET", f"/sessions/{sid}/stats", headers=auth), 404, "unknown")
