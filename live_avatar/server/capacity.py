"""Admission by what sessions really cost: a session is admitted only if every live one still holds
its frame rate afterwards (503 otherwise); ``max_sessions`` stays an upper bound.

What a session costs is everything the process does for it at the output size: the engine's
frames, the video encoder, the audio path, RTP/SRTP and the event loop. ``measure_session_cost``
estimates that once at start-up (the engine's own render cost plus aiortc's VP8 and opus encoders
run on frames of the output size); ``CapacityMonitor`` then keeps measuring while sessions run:

* the process's CPU time per second (all threads) divided among its sessions: the live cost of
  one session, which replaces the start-up estimate as soon as sessions have run a few seconds;
* the machine's busy cores (``/proc/stat``), so other programs on the same cores count too;
* per session, the frames late over the last few seconds (repeated, dropped, slots missed): a
  session with more than ``late_fraction`` of its slots late is *behind* (stats and /metrics).

A new session is admitted when no session is behind and the busy cores plus one more session's
cost (sessions still starting count at the larger of both estimates) stay within
``cpu_budget`` x the cores this process may use. With no session live the first is admitted
(nobody's frame rate to protect). ``AVATAR_CAPACITY_ADMISSION=off`` in the environment turns
admission by measurement off (the test suite does, for tests of other limits).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class CapacityConfig:
    enabled: bool = True  # False: only max_sessions and the engine's capacity limit sessions
    cpu_budget: float = 0.85  # share of the usable cores that sessions (and everything else) may keep busy
    late_fraction: float = 0.01  # a session with more of its slots late than this (over window_s) is behind
    window_s: float = 5.0  # how far back busy cores and late frames are judged
    young_s: float = 4.0  # a session younger than this has not shown its cost yet: the estimate counts
    # RTP/SRTP, the event loop and the rest on top of render + encode, until measured live: a live
    # lite session at 512x512 cost 0.52-0.55 cores where render + VP8 + opus measured 0.25-0.27
    network_overhead: float = 1.0


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def read_machine_busy() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat), None where unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [float(x) for x in fields[1:]]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0.0)  # idle + iowait
    total = sum(ticks[:8])
    return (total - idle) / hz, total / hz


def measure_session_cost(engine: Any, frames: int = 25) -> dict[str, float]:
    """CPU seconds per second of video of one session at the engine's output size: the engine's
    render cost (``engine.measure_cost`` where it has one), aiortc's VP8 encoder on frames of that
    size, and the opus encoder on 48 kHz speech. Runs for a second or two: call it off the loop."""
    import av
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    width, height = getattr(engine, "size", (512, 512))
    fps = int(getattr(engine, "fps", 25))
    measure = getattr(engine, "measure_cost", None)
    render = float(measure()) if callable(measure) else 0.0
    vp8 = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    start = time.thread_time()
    for k in range(frames):
        image = base.copy()
        image[height // 3 : height // 2, width // 3 : 2 * width // 3] = (k * 9) % 255  # a moving part
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = k * 3600, Fraction(1, 90000)
        vp8.encode(frame, force_keyframe=(k == 0))
    video = (time.thread_time() - start) / (frames / fps)
    opus = get_encoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2))
    t = np.arange(960) / 48000
    start = time.thread_time()
    for k in range(50):  # one second of speech-like audio
        pcm = (3000 * np.sin(2 * np.pi * (150 + 10 * k) * t)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, k * 960, Fraction(1, 48000)
        opus.encode(frame)
    audio = time.thread_time() - start
    return {"render": render, "video_encode": video, "audio": audio, "total": render + video + audio}


def cached_session_cost(engine: Any) -> dict[str, float]:
    """``measure_session_cost`` once per engine object (servers in one process share an engine)."""
    cost = getattr(engine, "_live_avatar_session_cost", None)
    if cost is None:
        cost = measure_session_cost(engine)
        try:
            engine._live_avatar_session_cost = cost
        except AttributeError:  # an engine with __slots__: measure again next time
            pass
    return cost


class CapacityMonitor:
    """Samples CPU use and each session's late frames once a second; answers whether one more
    session fits. ``sessions`` returns the live ``AvatarSession``s."""

    def __init__(self, config: CapacityConfig, sessions: Callable[[], list], *, cores: int | None = None,
                 startup_cost: dict[str, float] | None = None, metrics: Any = None,
                 process_cpu: Callable[[], float] = time.process_time,
                 machine_busy: Callable[[], tuple[float, float] | None] = read_machine_busy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._sessions = sessions
        self.cores = cores or usable_cores()
        self.startup_cost = startup_cost or {}
        self.metrics = metrics
        self._process_cpu = process_cpu
        self._machine_busy = machine_busy
        self._clock = clock
        n = max(2, int(config.window_s) + 1)
        self._samples: deque[tuple[float, float, tuple[float, float] | None, int]] = deque(maxlen=n)
        self._late: dict[str, deque[tuple[float, int, int]]] = {}  # session id -> (t, late, slots)
        self.live_cost: float | None = None  # CPU cores one session uses, measured while running
        self._task: asyncio.Task | None = None

    # -- sampling ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="capacity-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # the monitor must never take the server down
                log.exception("capacity sample failed")
            await asyncio.sleep(1.0)

    def sample(self) -> None:
        now = self._clock()
        sessions = self._sessions()
        settled = [s for s in sessions if now - s.created_at >= self.config.young_s]
        self._samples.append((now, self._process_cpu(), self._machine_busy(), len(settled) if len(settled) == len(sessions) else -1))
        first, last = self._samples[0], self._samples[-1]
        if last[0] - first[0] >= 2.0 and first[3] == last[3] and last[3] > 0:
            # every session settled and the count steady over the window: the process's CPU per session
            rate = (last[1] - first[1]) / (last[0] - first[0])
            cost = rate / last[3]
            self.live_cost = cost if self.live_cost is None else 0.5 * self.live_cost + 0.5 * cost
        live_ids = set()
        for session in sessions:
            live_ids.add(session.id)
            c = session.playout.counters
            history = self._late.setdefault(session.id, deque(maxlen=int(self.config.window_s) + 1))
            history.append((now, c.frames_repeated + c.frames_dropped + c.slots_skipped, c.slots + c.slots_skipped))
        for gone in set(self._late) - live_ids:
            del self._late[gone]
        if self.metrics is not None:
            self.metrics.sessions_behind.set(sum(1 for s in sessions if self.session_behind(s.id)))
            self.metrics.session_cpu_cores.set(self.session_cost())
            self.metrics.sessions_admissible.set(self.admissible())

    # -- judgements ----------------------------------------------------------------------------
    def late_recently(self, session_id: str) -> tuple[int, int]:
        """(late frames, slots) of a session over the window."""
        history = self._late.get(session_id)
        if not history or len(history) < 2:
            return 0, 0
        (_, late0, slots0), (_, late1, slots1) = history[0], history[-1]
        return late1 - late0, slots1 - slots0

    def session_behind(self, session_id: str) -> bool:
        late, slots = self.late_recently(session_id)
        return slots > 0 and late > self.config.late_fraction * slots

    def session_cost(self) -> float:
        """CPU cores one session costs: measured live once sessions ran, else the start-up estimate."""
        estimate = self.startup_cost.get("total", 0.0) * (1.0 + self.config.network_overhead)
        return self.live_cost if self.live_cost is not None else estimate

    def busy_cores(self) -> float:
        """Cores busy on the whole machine over the window (this process where the machine is unknown)."""
        if len(self._samples) < 2:
            return 0.0
        first, last = self._samples[0], self._samples[-1]
        if first[2] is not None and last[2] is not None:
            return (last[2][0] - first[2][0]) / max(last[2][1] - first[2][1], 1e-9) * self.cores
        return (last[1] - first[1]) / max(last[0] - first[0], 1e-9)

    def admissible(self, opening: int = 0) -> int:
        """How many more sessions would fit now (0 while a session is behind)."""
        sessions = self._sessions()
        if any(self.session_behind(s.id) for s in sessions):
            return 0
        now = self._clock()
        young = sum(1 for s in sessions if now - s.created_at < self.config.young_s) + opening
        cost = max(self.session_cost(), self.startup_cost.get("total", 0.0))
        free = self.cores * self.config.cpu_budget - self.busy_cores() - young * cost
        return max(0, int(free // cost)) if cost > 0 else 1 << 16

    def check(self, opening: int = 0) -> str | None:
        """None if one more session fits, else the reason (user-facing)."""
        if not self.config.enabled:
            return None
        behind = [s.id for s in self._sessions() if self.session_behind(s.id)]
        if behind:
            return (f"the server is at capacity: {len(behind)} live session(s) are falling behind "
                    f"(frames late over the last {self.config.window_s:g} s)")
        if not self._sessions() and opening == 0:
            return None  # nobody to protect: the first session is always admitted
        if self.admissible(opening) < 1:
            return (f"the server is at capacity: one more session needs ~{self.session_cost():.2f} CPU cores, "
                    f"{self.busy_cores():.2f} of {self.cores} are busy (budget {self.config.cpu_budget:.0%})")
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "cpu_budget": self.config.cpu_budget,
            "busy_cores": round(self.busy_cores(), 3),
            "session_cost_cores": round(self.session_cost(), 4),
            "startup_cost_cores": {k: round(v, 4) for k, v in self.startup_cost.items()},
            "live_cost_cores": None if self.live_cost is None else round(self.live_cost, 4),
            "admissible_now": self.admissible(),
        }

    def session_stats(self, session_id: str) -> dict[str, Any]:
        late, slots = self.late_recently(session_id)
        return {"behind": self.session_behind(session_id), "late_frames_recent": late, "slots_recent": slots,
                "window_s": self.config.window_s}
