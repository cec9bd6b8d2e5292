"""``avatar bench e2e``: the live path end to end over loopback WebRTC, measured at the receiving peer.

A real server process (``avatar serve``, lite engine by default) and an aiortc peer
(``server/loopback_peer.py``, extended here to keep only small thumbnails and to note RTP packet
arrivals) on one machine. The peer sends espeak-ng speech with pauses (every utterance is a speech
onset after >= 1 s of silence) as its microphone, paced in real time, and records what comes back:
every video frame (RTP pts, arrival time, 48x48 grey thumbnail), the returned speech (pts, arrival
time, samples) and the arrival of the first RTP packet of every frame of both tracks ("wire").

Measurements (all times are time.monotonic() of this process; server and peer share the clock):

* speech_to_lips (server): the session's own numbers (onset packet arrival -> send of the first
  frame generated from it). GET /sessions/{id}/stats is polled every 0.5 s and each new value
  (``count`` grows, ``last`` changes) is collected, so p50/p95 cover every onset of the run.
* speech_to_lips (peer): for every onset in the *sent* audio (10 ms RMS envelope above -40 dBFS
  after >= 0.5 s below), the first onset of the *returned* audio within 2 s after it. The server
  sends every frame's own input speech in the frame's playout slot, so the video frame of that
  slot (slot = audio pts / 1920 = video pts / 3600) is the first frame generated from the onset;
  its arrival minus the send time of the onset packet is what a viewer at the peer sees (encode,
  loopback, receive and decode included).
* speech_to_lips visible (peer, the issue-12 target p50 <= 160 / p95 <= 250 ms): from the send of
  the onset to the first RTP packet of the first frame in which the mouth is visibly open, the mouth
  found in the received thumbnails (bench/lips.py: a third of a typical syllable's opening above
  the frame's pre-onset baseline).
* A/V offset, positive = sound later than picture:
  (a) wire: per slot, first RTP packet of its audio minus first RTP packet of its video frame, as
      they reach the peer (before aiortc's jitter buffers: its audio buffer prefetches 80 ms,
      which a browser's adaptive, A/V-synchronised buffers do not); "decoded" is the same after
      aiortc's receive path, reported for information;
  (b) content (lip sync as seen): the mouth is found in the thumbnails as the pixels whose
      brightness follows the returned speech level, and the lag that maximises the correlation
      of that mouth signal with the speech level (both placed at their wire arrival) is the offset
      of sound against lips, the engine's own motion timing included.
  The target is judged on the worse of |a| p95 and |b|; |b| (and the visible speech-to-lips) only where
  the mouth pixels follow the speech (correlation >= 0.5: not with random weights).
* fps and the longest stall: arrival times of decoded video frames (and of their first packet).
* stalls (over 120 ms), each with what overlapped it (bench/stalls.py): a pause of the server process or
  of this one (event loop late, garbage collection: live_avatar/server/pause_watch.py, the server's from
  its session stats) or a gap in the server's handing of frames to its sender (``video_send_gaps``).
* frames repeated/dropped: the server's counters.
* memory: RSS of the server process (psutil), sampled every second; reported at
  ``--rss-baseline`` (default 60 s) and at the end; growth = end - baseline. On a machine with
  nvidia-smi, the GPU's used memory too (the server is the only process using it), growth from
  minute 1 to the end.
* gpu_state (nvidia-smi, every 5 s): SM clock, power, temperature, utilisation, the driver's clock
  reasons (power cap, thermal slowdown...) and, at the start, the limits and every process using a
  GPU: what differs when the same code runs slower on another machine (bench/gpu_state.py).
* while it runs, <output>.partial.json holds the server's stats so far (every 30 s,
  ``--progress-every``) and, every other time, the peer's (fps, speech-to-lips, first frame, A/V
  offset; not the mouth-based figures) with the summary's keys so far (``summary_so_far``); removed at
  the end. A run cut short still leaves figures.

The GPU engine: ``avatar bench e2e --engine liveavatar --random-weights --size 320*512
--engine-option fp8=true --engine-option compile=true`` (engine options go to ``avatar serve
--engine-option``; the server warms up before it says ready, and a configuration slower than real
time is benchmarked anyway: ``--allow-slow`` is passed). Its targets are the GPU ones (issue 8).
Without espeak-ng (the GPU machine), ``AVATAR_SPEECH_CACHE=DIR`` reads the speech synthesised into
that folder by a run on a machine that has it (tests/support/speech.py).

The JSON's ``summary`` holds the headline figures under fixed keys (gpu, size, duration_s,
fps_received, frames_skipped, frames_repeated, speech_to_lips_peer_p50_ms/_p95_ms,
first_frame_peer_ms, av_offset_p95_abs_ms, gpu_memory_growth_mb).

Results go to bench/results/e2e.json (``--output``); targets are checked and reported there.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.forked import run_forked
from bench.gpu_state import GpuSampler
from bench.onset_matching import detect_onsets, envelope_db, match_onsets
from bench.stalls import attribute_stalls
from live_avatar.server.pause_watch import PauseWatch
from tests.support.server_process import ServerProcess, http_json

DESCRIPTION = __doc__

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "e2e.json"

SENTENCES = (
    "Hello everyone, welcome back to the stream.",
    "Today we are looking at real time avatars.",
    "The mouth should move exactly when I speak.",
    "Let me show you how the latency is measured.",
    "Thanks for joining, and see you next time.",
    "Questions are welcome in the chat.",
    "This portrait is driven by my voice alone.",
    "One, two, three, four, five.",
)


@dataclass(frozen=True)
class Targets:
    s2l_p50_ms: float = 250.0
    s2l_p95_ms: float = 400.0
    fps: float = 25.0
    fps_tolerance: float = 0.5  # received fps within this of the target counts as steady
    max_stall_ms: float = 120.0
    max_abs_av_offset_ms: float = 40.0
    max_rss_growth_mb: float = 30.0
    peer_visible_p50_ms: float = 160.0
    peer_visible_p95_ms: float = 250.0
    max_first_frame_ms: float | None = None  # at the peer, from its first sent audio
    # the mouth-based figures are judged only where the pixels found as the mouth follow the speech at
    # least this well (lite: 0.75; the diffusion engine with random weights: 0.1-0.3, no mouth to find)
    min_mouth_correlation: float = 0.5


# the diffusion engine on one GPU (issue 8): 12-frame blocks, so lips follow ~1 s after speech
GPU_TARGETS = Targets(s2l_p50_ms=1000.0, s2l_p95_ms=1300.0, fps=25.0, fps_tolerance=0.1, max_stall_ms=200.0,
                      max_abs_av_offset_ms=40.0, max_rss_growth_mb=200.0, peer_visible_p50_ms=1000.0,
                      peer_visible_p95_ms=1300.0, max_first_frame_ms=1500.0)


@dataclass
class E2EConfig:
    duration_s: float = 600.0
    rss_baseline_s: float = 60.0
    tail_s: float = 300.0  # A/V offset is also reported over the run's last tail_s seconds
    engine: str = "lite"
    engine_options: list[str] = field(default_factory=list)  # KEY=VALUE, passed to avatar serve --engine-option
    avatar: str | None = None
    server_config: str | None = None
    output: Path = DEFAULT_OUTPUT
    seed: int = 7
    pause_s: tuple[float, float] = (1.0, 1.5)  # silence between utterances (VAD hangover 0.3 s + 0.5 s)
    lead_silence_s: float = 1.0
    words_per_minute: int = 160
    server_start_timeout_s: float = 120.0
    first_frame_timeout_s: float = 30.0  # from the answer: a connection that never comes ends the run
    stats_interval_s: float = 5.0
    progress_interval_s: float = 30.0  # a progress line and <output>.partial.json; the peer's figures every other one
    # peer-side onset detector (10 ms RMS envelope)
    envelope_hop_s: float = 0.01
    onset_threshold_db: float = -40.0
    min_silence_s: float = 0.5
    # a returned onset answers a sent one within this, told apart from the next utterance's by its level
    # contour and the latency's continuity (onset_matching.py); 2.0 s until 2026-12-04 cut off the
    # diffusion engine's slower half of the onsets
    match_window_s: float = 5.0
    contour_s: float = 1.5
    contour_max_lag_s: float = 0.05
    contour_strong: float = 0.8  # an answer on its contour alone
    contour_weak: float = 0.3  # an answer whose latency is within answer_max_jump_s of the previous answer's
    answer_max_jump_s: float = 0.75
    av_max_lag_s: float = 0.5
    targets: Targets = field(default_factory=Targets)


# ------------------------------------------------------------------------------------- speech


@dataclass
class SpeechProgram:
    samples: np.ndarray  # float32 mono, 16 kHz
    rate: int
    utterance_starts_s: list[float]


def build_speech_program(cfg: E2EConfig, workdir: Path) -> SpeechProgram:
    """Sentences in a seeded random order with seeded random pauses, ``duration_s`` long."""
    from tests.support.speech import espeak_speech, trim_silence

    rate = 16000
    utterances = [
        trim_silence(espeak_speech(text, rate, words_per_minute=cfg.words_per_minute), rate) for text in SENTENCES
    ]
    # espeak is loud and flat; scale to a typical close-mic speech level (peak ~ -6 dBFS)
    peak = max(float(np.max(np.abs(u))) for u in utterances)
    utterances = [u * (0.5 / peak) for u in utterances]

    rng = np.random.default_rng(cfg.seed)
    total = int(cfg.duration_s * rate)
    parts = [np.zeros(int(cfg.lead_silence_s * rate), np.float32)]
    length = parts[0].size
    starts: list[float] = []
    recent: list[int] = []  # no sentence again within 3 utterances: the peer tells answers apart by contour
    while True:
        choice = int(rng.choice([k for k in range(len(utterances)) if k not in recent]))
        recent = (recent + [choice])[-3:]
        utt = utterances[choice]
        pause = np.zeros(int(rng.uniform(*cfg.pause_s) * rate), np.float32)
        if length + utt.size + pause.size > total:
            break
        starts.append(length / rate)
        parts += [utt, pause]
        length += utt.size + pause.size
    parts.append(np.zeros(total - length, np.float32))
    return SpeechProgram(np.concatenate(parts), rate, starts)


# ------------------------------------------------------------------------------------- analysis


def best_lag(reference: np.ndarray, delayed: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag L (in samples, -max_lag..max_lag) maximising corr(reference[t], delayed[t + L]); and that corr."""
    a = (reference - reference.mean()) / (reference.std() + 1e-12)
    b = (delayed - delayed.mean()) / (delayed.std() + 1e-12)
    best = (0, -np.inf)
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            x, y = a[: a.size - lag], b[lag:]
        else:
            x, y = a[-lag:], b[: b.size + lag]
        n = min(x.size, y.size)
        if n < 10:
            continue
        c = float(np.dot(x[:n], y[:n]) / n)
        if c > best[1]:
            best = (lag, c)
    return best


def percentile(values: list[float] | np.ndarray, q: float) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return None if values.size == 0 else float(np.percentile(values, q))


def resample_on_grid(times: np.ndarray, values: np.ndarray, t0: float, t1: float, hop_s: float) -> np.ndarray:
    grid = np.arange(t0, t1, hop_s)
    if times.size < 2:
        return np.zeros(grid.size)
    return np.interp(grid, times, values)


# ------------------------------------------------------------------------------------- server


class BenchServer(ServerProcess):
    """``avatar serve`` in a child process, so that its RSS is the server's alone."""

    def __init__(self, cfg: E2EConfig, log_path: Path) -> None:
        args = ["--engine", cfg.engine]
        for option in cfg.engine_options:
            args += ["--engine-option", option]
        if cfg.engine != "lite":
            args.append("--allow-slow")  # a benchmark measures a configuration slower than real time too
        if cfg.avatar:
            args += ["--avatar", cfg.avatar]
        if cfg.server_config:
            args += ["--config", cfg.server_config]
        super().__init__(args, log_path, start_timeout_s=cfg.server_start_timeout_s)

    def rss_bytes(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system


# ------------------------------------------------------------------------------------- recording


def make_peer(samples_48k: np.ndarray, duration_s: float):
    """A ``LoopbackPeer`` (server/loopback_peer.py) that keeps, per video frame, only its arrival,
    pts and a 48x48 grey thumbnail: ten minutes of full RGB frames would not fit in memory."""
    from aiortc.mediastreams import MediaStreamError

    from tests.support.loopback_peer import LoopbackPeer, ReceivedVideoFrame

    class MotionRecordingPeer(LoopbackPeer):
        THUMB = 48  # grey thumbnail side: the mouth spans a few pixels, enough to see it open

        def __post_init__(self) -> None:
            super().__post_init__()
            self.video_thumbs: list[np.ndarray] = []  # uint8 [THUMB*THUMB] per frame: the mouth, cheaply
            self.video_size: tuple[int, int] | None = None
            # first arrival of each RTP timestamp (relative to the kind's first packet), per kind:
            # the wire timing, before aiortc's jitter buffers (its audio one prefetches 80 ms)
            self.wire_arrival: dict[str, dict[int, float]] = {"audio": {}, "video": {}}

        async def connect_offer(self, *args, **kwargs) -> str:
            session_id = await super().connect_offer(*args, **kwargs)
            for transceiver in self.pc.getTransceivers():
                self._tap_rtp(transceiver.receiver, transceiver.kind)
            return session_id

        def _tap_rtp(self, receiver, kind: str) -> None:
            """Note each packet's arrival on its way into the receiver (aiortc has no public hook)."""
            handle = receiver._handle_rtp_packet
            arrivals = self.wire_arrival[kind]
            origin: list[int] = []

            async def tapped(packet, arrival_time_ms):
                now = time.monotonic()
                if not origin:
                    origin.append(packet.timestamp)
                arrivals.setdefault((packet.timestamp - origin[0]) & 0xFFFFFFFF, now)
                return await handle(packet, arrival_time_ms=arrival_time_ms)

            receiver._handle_rtp_packet = tapped

        async def _read_video(self, track) -> None:  # replaces the peer's reader: same records + thumbnail
            try:
                while True:
                    frame = await track.recv()
                    arrival = time.monotonic()
                    if self.video_size is None:
                        self.video_size = (frame.width, frame.height)
                    if len(self.video_frames) < self.max_frames:
                        thumb = frame.reformat(width=self.THUMB, height=self.THUMB, format="gray").to_ndarray()
                        self.video_frames.append(ReceivedVideoFrame(arrival, int(frame.pts), None))
                        self.video_thumbs.append(np.ascontiguousarray(thumb, dtype=np.uint8).reshape(-1))
            except MediaStreamError:
                pass

    # bounds sized to the run: every frame of it is kept (times and thumbnails only); the browser
    # client's m-line layout (sendonly mic, recvonly video and audio)
    return MotionRecordingPeer(
        samples_48k, frame_format=None, max_frames=int((duration_s + 30) * 25), layout="browser"
    )


# ------------------------------------------------------------------------------------- analysis of a run

VIDEO_TICKS_PER_FRAME = 3600  # 90 kHz RTP clock at 25 fps
FPS = 25


def lip_sync_lag(
    thumbs: np.ndarray, t_video: np.ndarray, t_audio: np.ndarray, level_db: np.ndarray, hop_s: float, max_lag_s: float
) -> dict[str, Any]:
    """Lag of the speech level behind the mouth opening (> 0: sound after lips).

    The mouth is found from the data: the thumbnail pixels whose brightness follows the speech
    level best (level smoothed over 200 ms, so a lag of up to ~100 ms does not bias the choice; the
    top 2 % by |correlation|, sign-aligned and averaged). That mouth signal and the level (smoothed
    over one frame) are then cross-correlated on a ``hop_s`` grid over +-``max_lag_s``."""
    level = np.maximum(level_db, -60.0).astype(np.float64)
    broad = max(1, int(round(0.2 / hop_s)))
    level_broad = np.convolve(level, np.ones(broad) / broad, "same")
    z_level = np.interp(t_video, t_audio, level_broad)
    z_level = (z_level - z_level.mean()) / (z_level.std() + 1e-9)
    x = thumbs.astype(np.float32)
    x -= x.mean(axis=0)
    x /= x.std(axis=0) + 1e-3
    corr = (x.T @ z_level.astype(np.float32)) / x.shape[0]
    top = np.argsort(-np.abs(corr))[: max(4, corr.size // 50)]
    mouth = (x[:, top] * np.sign(corr[top])).mean(axis=1)

    t0, t1 = max(t_video[0], t_audio[0]) + 1.0, min(t_video[-1], t_audio[-1]) - 1.0
    if t1 - t0 < 5.0:
        return {"lag_ms": None, "correlation": None, "pixels": int(top.size), "mouth": mouth}
    order = np.argsort(t_video)
    mouth_grid = resample_on_grid(t_video[order], mouth[order], t0, t1, hop_s)
    frame = max(1, int(round(1.0 / FPS / hop_s)))
    level_grid = resample_on_grid(t_audio, np.convolve(level, np.ones(frame) / frame, "same"), t0, t1, hop_s)
    lag, c = best_lag(mouth_grid, level_grid, int(round(max_lag_s / hop_s)))
    return {"lag_ms": lag * hop_s * 1000, "correlation": c, "pixels": int(top.size), "mouth": mouth}


def analyse_peer(peer, program: SpeechProgram, cfg: E2EConfig, *, content: bool = True) -> dict[str, Any]:
    """Everything measured at the receiving peer (see the module docstring for the methods); ``content``
    False leaves out the mouth-based figures (the lip-sync lag, the mouth-visibly-open latency)."""
    hop = cfg.envelope_hop_s
    out: dict[str, Any] = {}

    # --- video cadence
    arrivals = np.asarray([f.arrival for f in peer.video_frames])
    video_pts = np.asarray([f.pts for f in peer.video_frames], dtype=np.int64)
    if arrivals.size < 2:
        raise RuntimeError("the peer received fewer than two video frames")
    gaps = np.diff(arrivals)
    span = arrivals[-1] - arrivals[0]
    out["video"] = {
        "frames_received": int(arrivals.size),
        "size": list(peer.video_size) if peer.video_size else None,
        "fps": (arrivals.size - 1) / span if span > 0 else None,
        "longest_stall_ms": float(gaps.max() * 1000),
        "stalls_over_120ms": int(np.sum(gaps > 0.120)),
        "frame_interval_p50_ms": percentile(gaps * 1000, 50),
        "frame_interval_p99_ms": percentile(gaps * 1000, 99),
        "pts_steps_not_one_frame": int(np.sum(np.diff(video_pts) != VIDEO_TICKS_PER_FRAME)),
    }
    # the same on the wire (first RTP packet of each frame): separates the server's pacing from
    # the receiving process's own decode delays
    wire_video_times = np.sort(np.fromiter(peer.wire_arrival["video"].values(), float))
    if wire_video_times.size > 1:
        wire_gaps = np.diff(wire_video_times)
        out["video"]["wire_longest_stall_ms"] = float(wire_gaps.max() * 1000)
        out["video"]["wire_stalls_over_120ms"] = int(np.sum(wire_gaps > 0.120))
    t_mic = peer.mic.started_at
    out["first_frame_latency_peer_ms"] = (arrivals[0] - t_mic) * 1000 if t_mic is not None else None

    # --- returned audio: 10 ms envelope, each hop with its arrival time and its pts time
    frames = [a for a in peer.audio_frames if a.samples.size and a.pts is not None]
    if not frames:
        raise RuntimeError("the peer received no audio")
    rate = 48000
    env_parts = [envelope_db(a.samples, rate, hop) for a in frames]
    counts = [e.size for e in env_parts]
    env_ret = np.concatenate(env_parts)
    hop_arrival = np.concatenate([a.arrival + np.arange(n) * hop for a, n in zip(frames, counts, strict=True)])
    hop_pts_s = np.concatenate([a.pts / rate + np.arange(n) * hop for a, n in zip(frames, counts, strict=True)])

    # --- sent speech: 10 ms envelope on the send clock
    env_sent = envelope_db(program.samples, program.rate, hop)
    sent_times = t_mic + np.arange(env_sent.size) * hop

    # --- speech to lips at the peer
    sent_on = detect_onsets(env_sent, hop, cfg.onset_threshold_db, cfg.min_silence_s)
    ret_on = detect_onsets(env_ret, hop, cfg.onset_threshold_db, cfg.min_silence_s)
    video_arrival_by_slot = {int(p) // VIDEO_TICKS_PER_FRAME: float(t) for p, t in zip(video_pts, arrivals, strict=True)}
    audio_samples_per_slot = rate // FPS
    s2l, s2l_wire, to_sound, unmatched = [], [], [], 0
    onset_slots, onset_sent = [], []  # for the mouth-visibly-open latency (bench/lips.py)
    horizon = min(sent_times[-1], hop_arrival[-1]) - cfg.match_window_s
    answerable = sent_on[sent_times[sent_on] <= horizon]  # later ones: the end of the run cut the answer off
    answers = match_onsets(env_sent, answerable, sent_times, env_ret, ret_on, hop_arrival,
                           window_s=cfg.match_window_s, contour_hops=int(round(cfg.contour_s / hop)),
                           max_lag_hops=int(round(cfg.contour_max_lag_s / hop)),
                           strong=cfg.contour_strong, weak=cfg.contour_weak, max_jump_s=cfg.answer_max_jump_s,
                           floor_db=cfg.onset_threshold_db - 10)
    for i, k in zip(answerable, answers, strict=True):
        t_sent = sent_times[i]
        if k is None:
            unmatched += 1
            continue
        h = ret_on[k]
        to_sound.append(hop_arrival[h] - t_sent)
        slot = int(round(hop_pts_s[h] * rate)) // audio_samples_per_slot
        onset_slots.append(slot)
        onset_sent.append(t_sent)
        if slot in video_arrival_by_slot:
            s2l.append(video_arrival_by_slot[slot] - t_sent)
        if slot * VIDEO_TICKS_PER_FRAME in peer.wire_arrival["video"]:
            s2l_wire.append(peer.wire_arrival["video"][slot * VIDEO_TICKS_PER_FRAME] - t_sent)
    s2l_ms, sound_ms = np.asarray(s2l) * 1000, np.asarray(to_sound) * 1000
    out["speech_to_lips_peer_ms"] = {
        "onsets_sent": int(sent_on.size),
        "matched": int(s2l_ms.size),
        "unmatched": unmatched,
        "p50": percentile(s2l_ms, 50),
        "p95": percentile(s2l_ms, 95),
        "max": float(s2l_ms.max()) if s2l_ms.size else None,
    }
    # the same up to the first RTP packet of that frame: without the peer's own decode
    s2l_wire_ms = np.asarray(s2l_wire) * 1000
    out["speech_to_lips_peer_ms"]["wire_p50"] = percentile(s2l_wire_ms, 50)
    out["speech_to_lips_peer_ms"]["wire_p95"] = percentile(s2l_wire_ms, 95)
    out["speech_to_sound_peer_ms"] = {"p50": percentile(sound_ms, 50), "p95": percentile(sound_ms, 95)}

    # --- A/V offset (a) transport, per slot: arrival of its audio - arrival of its video frame,
    # on the wire (first RTP packet of each) and after aiortc's receive path (decoded frames)
    wire_audio = peer.wire_arrival["audio"]
    wire_video = peer.wire_arrival["video"]
    samples_per_audio_packet = 960
    wire_pairs = np.asarray([
        (wire_video[ts], (wire_audio[slot * audio_samples_per_slot] - wire_video[ts]) * 1000)
        for ts in wire_video
        if (slot := ts // VIDEO_TICKS_PER_FRAME) * audio_samples_per_slot in wire_audio
    ]).reshape(-1, 2)
    wire_ms = wire_pairs[:, 1]
    # the same over the run's last tail_s seconds (a soak must end as well synchronised as it began)
    tail_ms = wire_pairs[wire_pairs[:, 0] >= wire_pairs[:, 0].max() - cfg.tail_s, 1] if wire_ms.size else wire_ms
    decoded_audio_by_slot: dict[int, float] = {}
    for a in frames:
        if a.pts % audio_samples_per_slot == 0:
            decoded_audio_by_slot.setdefault(a.pts // audio_samples_per_slot, a.arrival)
    decoded_ms = np.asarray(
        [(decoded_audio_by_slot[k] - t) * 1000 for k, t in video_arrival_by_slot.items() if k in decoded_audio_by_slot]
    )

    # (b) content: lag between mouth opening and the returned speech level, both placed at the wire
    # arrival of their RTP timestamps (the receiver's own buffering does not count)
    content: dict[str, Any] = {"lag_ms": None, "correlation": None, "pixels": 0}
    keep = [k for k, p in enumerate(video_pts) if int(p) in wire_video]
    audio_keep = [k for k, a in enumerate(frames) if a.pts - a.pts % samples_per_audio_packet in wire_audio]
    if content and len(keep) > 10 * FPS and audio_keep:
        t_video = np.asarray([wire_video[int(video_pts[k])] for k in keep])
        thumbs = np.stack([peer.video_thumbs[k] for k in keep])
        a_times = np.concatenate([
            wire_audio[frames[k].pts - frames[k].pts % samples_per_audio_packet]
            + (frames[k].pts % samples_per_audio_packet) / rate + np.arange(counts[k]) * hop
            for k in audio_keep
        ])
        a_level = np.concatenate([env_parts[k] for k in audio_keep])
        order = np.argsort(a_times)
        content = lip_sync_lag(thumbs, t_video, a_times[order], a_level[order], hop, cfg.av_max_lag_s)
        out["speech_to_lips_peer_ms"].update(_visible(content.pop("mouth"), video_pts[keep], t_video, frames,
                                                      env_parts, cfg, onset_slots, onset_sent))
    out["av_offset_ms"] = {
        "wire_p50": percentile(wire_ms, 50),
        "wire_p95_abs": percentile(np.abs(wire_ms), 95),
        "wire_slots_compared": int(wire_ms.size),
        "tail_s": cfg.tail_s,
        "wire_p95_abs_tail": percentile(np.abs(tail_ms), 95),
        "decoded_p50": percentile(decoded_ms, 50),
        "decoded_p95_abs": percentile(np.abs(decoded_ms), 95),
        "content_lag": content["lag_ms"],
        "content_correlation": content["correlation"],
        "content_mouth_pixels": content["pixels"],
    }
    return out


# ------------------------------------------------------------------------------------- the run


class StatsPoller:
    """Polls GET /sessions/{id}/stats; collects every speech-to-lips value the server reports (a new
    onset changes ``count`` and ``last``; onsets are seconds apart, polls 0.5 s apart)."""

    def __init__(self, url: str, interval_s: float = 0.5) -> None:
        self.url = url
        self.interval_s = interval_s
        self.last: dict | None = None
        self.s2l_ms: list[float] = []
        self.missed = 0
        self._count = 0

    async def run(self) -> None:
        while True:
            status, stats = await asyncio.to_thread(http_json, "GET", self.url, None, 5.0)
            if status == 200 and isinstance(stats, dict):
                self.last = stats
                s2l = stats.get("speech_to_lips_latency_ms") or {}
                count = int(s2l.get("count") or 0)
                if count > self._count and s2l.get("last") is not None:
                    self.s2l_ms.append(float(s2l["last"]))
                    self.missed += count - self._count - 1
                    self._count = count
            await asyncio.sleep(self.interval_s)


class RssSampler:
    def __init__(self, server: BenchServer, interval_s: float = 1.0) -> None:
        self.server = server
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)

    async def run(self, t_start: float) -> None:
        import psutil

        try:
            while True:
                self.samples.append((time.monotonic() - t_start, self.server.rss_bytes()))
                await asyncio.sleep(self.interval_s)
        except psutil.Error:
            return  # the server is gone; _run reports it

    def at(self, t: float) -> int | None:
        """The sample nearest to ``t`` seconds."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]


async def _run(cfg: E2EConfig, workdir: Path) -> dict[str, Any]:
    import soxr

    program = build_speech_program(cfg, workdir)
    samples_48k = soxr.resample(program.samples, program.rate, 48000).astype(np.float32)
    server = BenchServer(cfg, workdir / "server.log")
    print(f"starting the server ({cfg.engine}); log: {server.log_path}", flush=True)
    server.start()
    peer = make_peer(samples_48k, cfg.duration_s)
    tasks: list[asyncio.Task] = []
    peer_pauses = PauseWatch()  # this process's own pauses: the peer's side of a stall (bench/stalls.py)
    peer_pauses.start()
    try:
        rss_idle = server.rss_bytes()
        load_at_start = list(os.getloadavg())
        cpu_at_start = server.cpu_seconds()
        session_id = await peer.connect_offer(server.url)
        await wait_for_first_frame(peer, cfg.first_frame_timeout_s)
        print(f"session {session_id}: sending {cfg.duration_s:.0f} s of speech "
              f"({len(program.utterance_starts_s)} utterances)", flush=True)
        poller = StatsPoller(f"{server.url}/sessions/{session_id}/stats")
        rss = RssSampler(server)
        gpu = GpuSampler()
        t_start = time.monotonic()
        tasks = [asyncio.create_task(poller.run()), asyncio.create_task(rss.run(t_start)),
                 asyncio.create_task(gpu.run(t_start))]
        progress = asyncio.create_task(_progress(cfg, t_start, poller, rss, gpu, peer, program))
        tasks.append(progress)
        await peer.wait_sent(extra_s=1.5, timeout=cfg.duration_s + 120)
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited during the run ({server.proc.returncode}):\n{server.log_tail()}")
        run_s = time.monotonic() - t_start
        server_cpu_s = server.cpu_seconds() - cpu_at_start
        final_status, final_stats = await asyncio.to_thread(
            http_json, "GET", f"{server.url}/sessions/{session_id}/stats")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        status_delete = await peer.delete_session()
    finally:
        for task in tasks:
            task.cancel()
        await peer.close()
        server.stop()
        await peer_pauses.stop()

    peer_results = analyse_peer(peer, program, cfg)
    stats = final_stats if final_status == 200 else (poller.last or {})
    server_pauses = stats.get("process_pauses") or {}
    peer_pause_summary = peer_pauses.summary(since=t_start)
    sides = {"server": server_pauses.get("events", []) + ((stats.get("video_send_gaps") or {}).get("events") or []),
             "peer": peer_pause_summary["events"]}
    first_frame = min((f.arrival for f in peer.video_frames), default=None)
    s2l = np.asarray(poller.s2l_ms)
    rss_base = rss.at(cfg.rss_baseline_s)
    rss_end = rss.samples[-1][1] if rss.samples else None
    mb = 1024 * 1024
    result = {
        "server": {
            "first_frame_latency_ms": stats.get("first_frame_latency_ms"),
            "first_frame_budget_ms": stats.get("first_frame_budget_ms"),
            "speech_to_lips_ms": {
                "count": int(s2l.size),
                "polls_missed_onsets": poller.missed,
                "p50": percentile(s2l, 50),
                "p95": percentile(s2l, 95),
                "max": float(s2l.max()) if s2l.size else None,
                "reported_p50": (stats.get("speech_to_lips_latency_ms") or {}).get("p50"),
                "reported_p90": (stats.get("speech_to_lips_latency_ms") or {}).get("p90"),
            },
            "fps": stats.get("fps"),
            "frames_sent": stats.get("frames_sent"),
            "frames_repeated": stats.get("frames_repeated"),
            "frames_dropped": stats.get("frames_dropped"),
            "slots_skipped": stats.get("slots_skipped"),
            "latency_trims": stats.get("latency_trims"),
            "latency_budget_ms": stats.get("latency_budget_ms"),
            "playout_margin": stats.get("playout_margin"),
            "stream": stats.get("stream"),
            "delete_status": status_delete,
            "close_reason": stats.get("close_reason"),
            "cpu_cores_used": server_cpu_s / run_s,  # CPU-seconds of the server process per second
        },
        "load_avg_at_start": load_at_start,
        "peer": peer_results,
        # each stall of the peer's video (decoded, and first packets on the wire) lined up with the pauses of
        # the server and peer processes (times from the first frame's arrival)
        "stalls": {
            "decoded": attribute_stalls((f.arrival for f in peer.video_frames), sides, t0=first_frame),
            "wire": attribute_stalls(peer.wire_arrival["video"].values(), sides, t0=first_frame),
            "server_process_pauses": _pauses_from(server_pauses, first_frame) or None,
            "server_video_send_gaps": _pauses_from(stats.get("video_send_gaps") or {}, first_frame),
            "peer_process_pauses": _pauses_from(peer_pause_summary, first_frame),
        },
        "memory": {
            "rss_idle_mb": rss_idle / mb,
            "baseline_at_s": cfg.rss_baseline_s,
            "rss_baseline_mb": None if rss_base is None else rss_base / mb,
            "rss_end_mb": None if rss_end is None else rss_end / mb,
            "end_at_s": rss.samples[-1][0] if rss.samples else None,
            "growth_mb": None if rss_base is None or rss_end is None else (rss_end - rss_base) / mb,
            "series_mb_every_30s": [round(b / mb, 1) for t, b in rss.samples[::30]],
            "gpu_used_mb_every_30s": [round(m) for t, m in gpu.memory_at(0.0)[:: max(1, round(30 / gpu.interval_s))]],
            "gpu_growth_mb_from_60s": gpu.growth_mb(60.0),
        },
        "gpu": gpu.gpu_name,
        # clocks, power, temperature, clock reasons and other processes: why one GPU ran slower than another
        "gpu_state": gpu.summary(),
    }
    result["summary"] = summarize(result, cfg, peer.video_size)
    result["targets"] = check_targets(result, cfg.targets)
    return result


def summarize(result: dict[str, Any], cfg: E2EConfig, video_size: tuple[int, int] | None) -> dict[str, Any]:
    """The headline figures under fixed keys (see the module docstring)."""
    return _summary(result.get("gpu"), video_size, cfg.duration_s, peer_headline(result["peer"]), result["server"],
                    result["memory"]["gpu_growth_mb_from_60s"])


def _summary(gpu_name: str | None, video_size: tuple[int, int] | None, duration_s: float, headline: dict[str, Any],
             server: dict[str, Any], gpu_growth_mb: float | None) -> dict[str, Any]:
    """The summary's keys, in order, from the peer's headline figures and the server's session stats."""
    return {
        "gpu": gpu_name,
        "size": f"{video_size[0]}x{video_size[1]}" if video_size else None,
        "duration_s": duration_s,
        "fps_received": headline["fps_received"],
        "frames_skipped": (server.get("stream") or {}).get("frames_skipped"),
        "frames_repeated": server.get("frames_repeated"),
        **{k: v for k, v in headline.items() if k != "fps_received"},
        "gpu_memory_growth_mb": gpu_growth_mb,
    }


def summary_so_far(peer_figures: dict[str, Any] | None, server_stats: dict[str, Any] | None, gpu_name: str | None,
                   video_size: tuple[int, int] | None, gpu_growth_mb: float | None) -> dict[str, Any] | None:
    """The summary's keys over a run so far, for the partial JSON: a run cut short (a GPU machine taken
    back) still leaves them. ``duration_s`` is when the peer's figures were taken; the server's counts
    (frames skipped, repeated) are from its latest stats, a little later. None until the peer has figures."""
    if not peer_figures or "error" in peer_figures or not server_stats:
        return None
    headline = {k: peer_figures.get(k) for k in PEER_HEADLINE_KEYS}
    return _summary(gpu_name, video_size, round(peer_figures["t_s"], 1), headline, server_stats, gpu_growth_mb)


def _pauses_from(summary: dict[str, Any], t0: float) -> dict[str, Any]:
    """A PauseWatch summary (or the server's video send gaps: events of the same shape) with its events'
    times from ``t0`` (as the stalls' ``at_s``), so both line up."""
    out = {k: v for k, v in summary.items() if k != "events"}
    if summary:
        out["longest"] = [[round(at - t0, 3), ms, kind] for at, ms, kind in summary.get("events") or []]
    return out


# the summary's figures measured at the peer: peer_headline's keys, and what summary_so_far takes from the
# partial JSON's peer figures
PEER_HEADLINE_KEYS = ("fps_received", "speech_to_lips_peer_p50_ms", "speech_to_lips_peer_p95_ms", "first_frame_peer_ms",
                      "av_offset_p95_abs_ms")


def peer_headline(peer: dict[str, Any]) -> dict[str, Any]:
    """The summary's figures measured at the peer (from :func:`analyse_peer`'s result)."""
    s2l = peer["speech_to_lips_peer_ms"]
    values = (peer["video"]["fps"], s2l["p50"], s2l["p95"], peer["first_frame_latency_peer_ms"], peer["av_offset_ms"]["wire_p95_abs"])
    return dict(zip(PEER_HEADLINE_KEYS, values, strict=True))


def peer_snapshot(peer) -> SimpleNamespace:
    """What the peer has received so far: the frames that have their thumbnail, and copies of the lists
    (they keep growing in the receiving process)."""
    n = min(len(peer.video_frames), len(peer.video_thumbs))
    return SimpleNamespace(video_frames=peer.video_frames[:n], video_thumbs=peer.video_thumbs[:n],
                           audio_frames=list(peer.audio_frames), video_size=peer.video_size, mic=peer.mic,
                           wire_arrival={kind: dict(times) for kind, times in peer.wire_arrival.items()})


def peer_so_far(snapshot: SimpleNamespace, program: SpeechProgram, cfg: E2EConfig, t_s: float) -> dict[str, Any]:
    """The summary's peer figures over the run so far, from a :func:`peer_snapshot` (for the partial JSON
    of a run that may be cut)."""
    try:
        results = analyse_peer(snapshot, program, cfg, content=False)
    except Exception as exc:  # noqa: BLE001 - too early (no frames back yet) or odd data: the run goes on
        return {"t_s": t_s, "error": f"{type(exc).__name__}: {exc}"}
    # the onsets sent and matched so far beside the percentiles
    return {"t_s": t_s, **peer_headline(results), "speech_to_lips_peer_ms": results["speech_to_lips_peer_ms"]}


async def _peer_so_far_forked(peer, program: SpeechProgram, cfg: E2EConfig, t_s: float) -> dict[str, Any]:
    """:func:`peer_so_far` in a forked child (bench/forked.py): the fork is the snapshot."""
    try:
        return await run_forked(lambda: peer_so_far(peer_snapshot(peer), program, cfg, t_s))
    except RuntimeError as exc:  # the child died: the partial file goes without the peer's figures
        return {"t_s": t_s, "error": str(exc)}


def partial_path(output: Path) -> Path:
    """Where a run in progress keeps its latest server stats (removed when the run writes its JSON)."""
    return output.with_name(output.stem + ".partial.json")


async def _progress(cfg: E2EConfig, t_start: float, poller: StatsPoller, rss: RssSampler, gpu: GpuSampler,
                    peer, program: SpeechProgram) -> None:
    """Every ``progress_interval_s`` (30 s): a progress line, and the server's stats so far in
    <output>.partial.json, so a run cut short (a GPU machine taken back) still leaves its figures; every
    other time the peer's figures too (analysed in a forked child, without the mouth-based ones: the
    receiving loop keeps going)."""
    partial = partial_path(cfg.output)
    partial.parent.mkdir(parents=True, exist_ok=True)
    peer_figures: dict[str, Any] | None = None
    analysis: asyncio.Task | None = None
    try:
        for tick in itertools.count(1):
            await asyncio.sleep(cfg.progress_interval_s)
            if analysis is not None and analysis.done():
                peer_figures, analysis = analysis.result(), None
            if tick % 2 == 0 and analysis is None:
                # in a forked child: in a thread it held the GIL long enough to stall the peer's loop
                analysis = asyncio.create_task(_peer_so_far_forked(peer, program, cfg, time.monotonic() - t_start))
            _write_partial(partial, cfg, t_start, poller, rss, gpu, peer_figures, peer.video_size)
    finally:
        if analysis is not None:
            analysis.cancel()


def _write_partial(partial: Path, cfg: E2EConfig, t_start: float, poller: StatsPoller, rss: RssSampler,
                   gpu: GpuSampler, peer_figures: dict[str, Any] | None, video_size: tuple[int, int] | None) -> None:
    """<output>.partial.json (replaced atomically) and a progress line."""
    t_s = time.monotonic() - t_start
    snapshot = {"benchmark": "e2e (in progress)", "t_s": t_s, "duration_s": cfg.duration_s,
                "server_speech_to_lips_ms": poller.s2l_ms, "server_stats": poller.last,
                "peer_so_far": peer_figures, "gpu_state": gpu.summary(),
                "summary_so_far": summary_so_far(peer_figures, poller.last, gpu.gpu_name, video_size, gpu.growth_mb(60.0))}
    tmp = partial.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot, indent=1, default=_json_default) + "\n")
    tmp.replace(partial)
    last = poller.last or {}
    stream = last.get("stream") or {}
    s2l = poller.s2l_ms[-1] if poller.s2l_ms else None
    peer_s2l = (peer_figures or {}).get("speech_to_lips_peer_p50_ms")
    onsets = (peer_figures or {}).get("speech_to_lips_peer_ms") or {}
    # answered of those old enough to be (the last match window's are not yet)
    answered = f", {onsets['matched']}/{onsets['matched'] + onsets['unmatched']} onsets" if "matched" in onsets else ""
    gpu_now = ""
    if gpu.samples:
        g = gpu.samples[-1]
        gpu_now = (f"  gpu {g.get('sm_clock_mhz')} MHz {g.get('power_w')} W {g.get('temperature_c')} C "
                   f"{','.join(g.get('clock_reasons') or []) or '-'}")
    print(f"  {t_s:5.0f}/{cfg.duration_s:.0f} s  fps {_fmt(last.get('fps'))}  "
          f"s2l last {_fmt(s2l)} ms (peer p50 {_fmt(peer_s2l)}{answered})  block p50 {_fmt(stream.get('compute_ms_p50'))} ms "
          f"(first out {_fmt(stream.get('first_out_ms_p50'))})  "
          f"skipped {stream.get('frames_skipped')} (silent {stream.get('silent_frames_skipped')})  "
          f"repeated {last.get('frames_repeated')}  dropped {last.get('frames_dropped')}  "
          f"rss {rss.samples[-1][1] / 2**20 if rss.samples else 0:.0f} MB{gpu_now}", flush=True)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _visible(mouth, pts, t_video, audio_frames, env_parts, cfg: E2EConfig, onset_slots, onset_sent) -> dict[str, Any]:
    """Speech-to-lips to the first frame with the mouth visibly open (bench/lips.py)."""
    from bench.lips import visible_onsets

    slots = np.asarray(pts, np.int64) // VIDEO_TICKS_PER_FRAME
    loud_slots = set()
    per_slot = 48000 // FPS
    for a, env in zip(audio_frames, env_parts, strict=True):
        for j in np.flatnonzero(env > cfg.onset_threshold_db):
            loud_slots.add(int(a.pts + j * 480) // per_slot)
    speech = np.asarray([int(s) in loud_slots for s in slots])
    found = visible_onsets(np.asarray(mouth), slots, np.asarray(t_video), speech, onset_slots, onset_sent)
    lat = found["latencies_ms"]
    return {
        "visible_p50": percentile(lat, 50),
        "visible_p95": percentile(lat, 95),
        "visible_max": max(lat) if lat else None,
        "visible_matched": len(lat),
        "visible_frames_after_sound_p50": percentile(found["frames_after_sound"], 50),
        "visible_mouth_range": found["range"],
    }


def check_targets(result: dict[str, Any], t: Targets) -> dict[str, Any]:
    server, peer, memory = result["server"], result["peer"], result["memory"]
    av = peer["av_offset_ms"]
    checks = {}

    def check(name: str, value: Any, ok: bool | None, target: str) -> None:
        checks[name] = {"value": value, "target": target, "met": ok}

    p50, p95 = server["speech_to_lips_ms"]["p50"], server["speech_to_lips_ms"]["p95"]
    check("speech_to_lips_p50_ms", p50, None if p50 is None else p50 <= t.s2l_p50_ms, f"<= {t.s2l_p50_ms}")
    check("speech_to_lips_p95_ms", p95, None if p95 is None else p95 <= t.s2l_p95_ms, f"<= {t.s2l_p95_ms}")
    peer_s2l = peer["speech_to_lips_peer_ms"]
    correlation = av.get("content_correlation")
    mouth_found = correlation is not None and correlation >= t.min_mouth_correlation
    no_mouth = (f"the mouth signal follows the speech by {correlation or 0:.2f} < {t.min_mouth_correlation}"
                " (no mouth found, e.g. random weights)")
    not_judged = "" if mouth_found else f"; not judged: {no_mouth}"
    vp50, vp95 = peer_s2l.get("visible_p50"), peer_s2l.get("visible_p95")
    check("peer_visible_s2l_p50_ms", vp50, None if vp50 is None or not mouth_found else vp50 <= t.peer_visible_p50_ms,
          f"<= {t.peer_visible_p50_ms} (send of the onset -> first RTP packet of the first frame with the mouth open)"
          + not_judged)
    check("peer_visible_s2l_p95_ms", vp95, None if vp95 is None or not mouth_found else vp95 <= t.peer_visible_p95_ms,
          f"<= {t.peer_visible_p95_ms}" + not_judged)
    fps = peer["video"]["fps"]
    check("fps", fps, None if fps is None else abs(fps - t.fps) <= t.fps_tolerance, f"{t.fps} +- {t.fps_tolerance}")
    stall = peer["video"]["longest_stall_ms"]
    check("longest_stall_ms", stall, stall <= t.max_stall_ms, f"<= {t.max_stall_ms}")
    content_lag = abs(av["content_lag"]) if av["content_lag"] is not None and mouth_found else None
    offsets = [v for v in (av["wire_p95_abs"], content_lag) if v is not None]
    worst = max(offsets) if offsets else None
    check("abs_av_offset_ms", worst, None if worst is None else worst <= t.max_abs_av_offset_ms,
          f"<= {t.max_abs_av_offset_ms} " + ("(worse of wire p95 and content lag)" if mouth_found
                                             else f"(wire p95; the content lag left out: {no_mouth})"))
    tail = av["wire_p95_abs_tail"]
    check("abs_av_offset_tail_ms", tail, None if tail is None else tail <= t.max_abs_av_offset_ms,
          f"<= {t.max_abs_av_offset_ms} (wire p95 over the last {av['tail_s']:.0f} s)")
    first = peer["first_frame_latency_peer_ms"]
    if t.max_first_frame_ms is not None:
        check("first_frame_peer_ms", first, None if first is None else first <= t.max_first_frame_ms,
              f"<= {t.max_first_frame_ms}")
    growth = memory["growth_mb"]
    check("rss_growth_mb", growth, None if growth is None else growth < t.max_rss_growth_mb,
          f"< {t.max_rss_growth_mb} from {memory['baseline_at_s']} s to the end")
    return checks


# ------------------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = E2EConfig()
    p.add_argument("--duration", type=float, default=d.duration_s, help="seconds of continuous speech (default 600)")
    p.add_argument("--rss-baseline", type=float, default=d.rss_baseline_s,
                   help="second at which the RSS baseline is taken (default 60); growth = end - baseline")
    p.add_argument("--quick", action="store_true", help="sanity run: 45 s, RSS baseline at 15 s")
    p.add_argument("--engine", default=d.engine, help="engine of the server (default lite)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option for the server (repeatable), e.g. fp8=true")
    p.add_argument("--random-weights", action="store_true", help="liveavatar: the 14B architecture with random weights")
    p.add_argument("--size", default=None, help="liveavatar: output size W*H, e.g. 320*512")
    p.add_argument("--start-timeout", type=float, default=None,
                   help="seconds for the server to load, warm up and say ready (default 120; 900 for liveavatar)")
    p.add_argument("--avatar", default=None, help="portrait image for the server's default avatar")
    p.add_argument("--config", default=None, help="server YAML config (default configs/server.yaml)")
    p.add_argument("--seed", type=int, default=d.seed, help="order of sentences and pause lengths")
    p.add_argument("--note", default=None, help="a note stored with the results (e.g. 'machine shared with other jobs')")
    p.add_argument("--output", type=Path, default=None,
                   help=f"JSON results (default {d.output.relative_to(REPO_ROOT)}; --quick: e2e_quick.json beside it)")
    p.add_argument("--server-log", type=Path, default=None,
                   help="keep the server's log there (it lives in a temporary folder removed at the end)")
    p.add_argument("--progress-every", type=float, default=d.progress_interval_s, metavar="S",
                   help="seconds between progress lines and updates of <output>.partial.json (default 30)")


def run(args: argparse.Namespace) -> int:
    cfg = E2EConfig(
        duration_s=45.0 if args.quick else args.duration,
        rss_baseline_s=15.0 if args.quick else args.rss_baseline,
        engine=args.engine,
        engine_options=list(args.engine_option) + (["random_weights=true"] if args.random_weights else [])
        + ([f"size={args.size}"] if args.size else []),
        server_start_timeout_s=args.start_timeout or (120.0 if args.engine == "lite" else 900.0),
        targets=Targets() if args.engine == "lite" else GPU_TARGETS,
        avatar=args.avatar,
        server_config=args.config,
        seed=args.seed,
        progress_interval_s=args.progress_every,
        output=args.output or (DEFAULT_OUTPUT.with_name("e2e_quick.json") if args.quick else DEFAULT_OUTPUT),
    )
    if cfg.duration_s < 20 or cfg.rss_baseline_s >= cfg.duration_s:
        print("error: --duration must be >= 20 s and larger than --rss-baseline", file=sys.stderr)
        return 2
    if cfg.progress_interval_s < 1:
        print("error: --progress-every must be >= 1 s", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        log = Path(tmp) / "server.log"
        try:
            result = asyncio.run(_run(cfg, Path(tmp)))
        except (RuntimeError, TimeoutError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            if log.exists():
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        finally:
            keep_server_log(log, getattr(args, "server_log", None))
    result = {
        "benchmark": "e2e",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_1_5_15": list(os.getloadavg()), "note": getattr(args, "note", None)},
        **result,
    }
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    partial_path(cfg.output).unlink(missing_ok=True)
    print(f"wrote {cfg.output}")
    for name, c in result["targets"].items():
        verdict = "n/a" if c["met"] is None else ("met" if c["met"] else "NOT met")
        value = c["value"] if not isinstance(c["value"], float) else round(c["value"], 1)
        print(f"  {name:24s} {value!s:>10}  target {c['target']}: {verdict}")
    return 0


async def wait_for_first_frame(peer, timeout_s: float) -> None:
    """Fail the run at once, not after its whole duration, when the connection or its video never
    comes (a DTLS handshake that fails is silent on the peer's side)."""
    deadline = time.monotonic() + timeout_s
    while not peer.video_frames:
        if time.monotonic() > deadline or peer.pc.connectionState in ("failed", "closed"):
            raise RuntimeError(
                f"no video {timeout_s:g} s after the answer: the peer connection is {peer.pc.connectionState} "
                f"(ICE {peer.pc.iceConnectionState}); the server log below says why")
        await asyncio.sleep(0.05)


def keep_server_log(log: Path, destination: Path | None) -> None:
    """Copy the server's log out of the run's temporary folder (``--server-log``), also after a failure."""
    if destination is None or not log.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, destination)
    print(f"server log kept: {destination}", flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":  # python -m bench.e2e [--quick] (same as `avatar bench e2e`)
    _parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=DESCRIPTION,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
