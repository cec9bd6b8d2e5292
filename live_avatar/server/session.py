"""One live avatar session: audio in -> engine StreamSession -> playout -> consumers.

The audio entry point (``push_audio``) takes 16 kHz float32 samples and knows nothing about WebRTC:
a peer connection's audio track is one producer (``attach_audio_track``), a WebSocket TTS feed can
be another. The output is a ``Fanout`` of playout slots; ``add_webrtc_consumer`` makes the pair of
outgoing tracks for one peer connection, and more consumers (viewer pages, WHEP, RTMP) can
subscribe to the same fan-out without the generator doing any extra work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from typing import Any, Awaitable, Callable

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from live_avatar.core.audio import OutputAudioResampler
from live_avatar.core.audio.full_band import FullBandIngest
from live_avatar.server.config import SessionConfig
from live_avatar.server.latency_budget import LatencyBudget, first_frame_stages
from live_avatar.server.media.clock import MediaClock
from live_avatar.server.media.fanout import Fanout
from live_avatar.server.media.margin import MarginControl
from live_avatar.server.media.playout import OutputSlot, Playout
from live_avatar.server.media.tracks import AvatarVideoTrack, SyncedAudioTrack
from live_avatar.server.metrics import ServerMetrics

log = logging.getLogger(__name__)

LATENCY_HISTORY = 256  # speech-to-lips samples kept per session for the stats endpoint


def _summary_ms(values) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    arr = np.asarray(values, np.float64) * 1000.0
    return {"p50": float(np.median(arr)), "max": float(arr.max())}


async def _drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass


def new_session_id() -> str:
    return uuid.uuid4().hex[:16]


class AvatarSession:
    def __init__(
        self,
        stream: Any,  # live_avatar.core.stream.StreamSession
        config: SessionConfig,
        metrics: ServerMetrics,
        *,
        session_id: str | None = None,
        client: str | None = None,
        on_closed: Callable[["AvatarSession"], Awaitable[None] | None] | None = None,
    ) -> None:
        self.id = session_id or new_session_id()
        self.client = client  # who opened it (auth.Caller.client), for per-client limits
        self.stream = stream
        self.config = config
        self.metrics = metrics
        self.state = "starting"  # starting -> live -> closed
        self.close_reason: str | None = None
        self.created_at = time.monotonic()
        self._on_closed = on_closed
        self.clock = MediaClock(fps=stream.fps)
        self.fanout: Fanout[OutputSlot] = Fanout(default_maxsize=config.consumer_queue_slots)
        self.playout = Playout(
            self.clock,
            self.fanout,
            OutputAudioResampler(stream.sample_rate, self.clock.audio_rate).push,
            playout_delay_s=config.playout_delay_ms / 1000.0,
            max_buffered_frames=config.max_buffered_frames,
            on_slot=self._on_slot,
            keep_every_frame=bool(getattr(getattr(stream, "config", None), "buffered", False)),
            margin=MarginControl(min_margin_s=config.min_margin_ms / 1000.0) if config.adaptive_margin else None,
            block_frames=stream.block_frames,
        )
        self.first_audio_at: float | None = None
        self.last_audio_at: float | None = None
        self.first_frame_latency: float | None = None
        self.first_frame_budget: dict[str, float] | None = None  # ms per stage (latency_budget.first_frame_stages)
        self.speech_to_lips: deque[float] = deque(maxlen=LATENCY_HISTORY)
        self.latency_budget = LatencyBudget()
        self._pushed_at: dict[float, float] = {}  # packet arrival -> when push_audio took it (recent)
        self._slot_times: deque[float] = deque(maxlen=stream.fps * 2)  # for the measured fps
        self._video_tracks: list[AvatarVideoTrack] = []
        self._audio_tracks: list[SyncedAudioTrack] = []
        self._tasks: list[asyncio.Task] = []
        self._closing: asyncio.Task | None = None
        self._close_callbacks: list[Callable[[], Awaitable[None] | None]] = []
        self._reported = {"sent": 0, "repeated": 0, "dropped": 0}
        # "peer": the WebRTC peer's microphone; "websocket": speech pushed over /sessions/{id}/audio
        self.audio_source = "peer"
        self.speech: Any = None  # server/speech_input.SpeechInput when audio_source is "websocket"
        self.avatar_changes: Any = None  # server/avatar_changes.AvatarChanges: live avatar/prompt, PATCH
        self._slot_listeners: list[Callable[[OutputSlot], None]] = []
        self._interrupt_listeners: list[Callable[[], None]] = []
        self.stats_sections: dict[str, Callable[[], Any]] = {}  # more parts of stats(), by key
        self.capacity_stats: Callable[[], dict] | None = None  # set by the SessionManager's capacity monitor

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self._pump_chunks(), "chunks")
        self._spawn(self.playout.run(), "playout")

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=f"session-{self.id}-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.state != "closed":
            log.error("session %s: task %s failed", self.id, task.get_name(), exc_info=exc)
            self.close_soon(f"internal error in {task.get_name()}: {exc}")

    async def _pump_chunks(self) -> None:
        budget_s = self.stream.block_frames / self.stream.fps
        async for chunk in self.stream.chunks():
            if chunk.ends_block:
                self.metrics.observe_block_compute(chunk.timings.compute_s, budget_s)
            self.playout.add_chunk(chunk, self.clock.now())
        if self.state != "closed":
            self.close_soon("generator finished")

    def add_close_callback(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``callback`` when the session closes (e.g. close its peer connection)."""
        self._close_callbacks.append(callback)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def close_soon(self, reason: str) -> None:
        """Schedule ``close`` (safe from callbacks that cannot await)."""
        if self._closing is None and self.state != "closed":
            self._closing = asyncio.ensure_future(self.close(reason))

    async def close(self, reason: str = "closed") -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self.close_reason = reason
        log.info("session %s closed: %s", self.id, reason)
        self.playout.close()  # ends every consumer's subscription
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for track in self._video_tracks + self._audio_tracks:
            track.stop()
        try:
            await self.stream.close()
        except Exception:
            log.exception("session %s: closing the engine session failed", self.id)
        self.report_counters()
        for callback in self._close_callbacks:
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("session %s: close callback failed", self.id)
        if self._on_closed is not None:
            result = self._on_closed(self)
            if asyncio.iscoroutine(result):
                await result

    # -- audio in (producer independent) -------------------------------------------------------
    def push_audio(self, samples_16k: np.ndarray, t_arrival: float | None = None,
                   full_band: np.ndarray | None = None) -> int | None:
        """``full_band``: the same speech at 48 kHz (3x the samples), sent back as it came in;
        without it the outgoing audio is the 16 kHz copy upsampled. Returns the session timeline
        index of the first sample (see StreamSession.push_audio)."""
        if self.state == "closed":
            return None
        t = time.monotonic() if t_arrival is None else t_arrival
        if self.first_audio_at is None:
            self.first_audio_at = t
        self.last_audio_at = t
        if samples_16k.size:
            self._pushed_at[t] = time.monotonic()
            if len(self._pushed_at) > 256:
                del self._pushed_at[next(iter(self._pushed_at))]
            if full_band is None:
                return self.stream.push_audio(samples_16k, t)
            return self.stream.push_audio(samples_16k, t, full_band=full_band)
        return None

    def end_of_speech(self) -> None:
        if self.state != "closed":
            self.stream.end_of_speech()

    def interrupt(self) -> float:
        """Barge-in: drop queued speech (engine queue and playout buffer); returns the playback
        position in seconds."""
        position = float(self.stream.interrupt())
        self.playout.discard_buffered()
        for listener in list(self._interrupt_listeners):
            listener()
        return position

    def add_slot_listener(self, listener: Callable[[OutputSlot], None]) -> None:
        """Called on the event loop with every slot the playout publishes (playback positions)."""
        self._slot_listeners.append(listener)

    def add_interrupt_listener(self, listener: Callable[[], None]) -> None:
        """Called after every interrupt (whoever asked for it: HTTP or a producer)."""
        self._interrupt_listeners.append(listener)

    def attach_audio_track(self, track: MediaStreamTrack) -> None:
        """Feed a WebRTC audio track (any rate/layout) into ``push_audio``."""
        self._spawn(self._read_track(track), "audio-in")

    async def _read_track(self, track: MediaStreamTrack) -> None:
        ingest = FullBandIngest(self.stream.sample_rate, self.clock.audio_rate)
        while self.state != "closed":
            try:
                async with asyncio.timeout(self.config.idle_timeout_s):  # no task per packet, unlike wait_for
                    frame = await track.recv()
            except MediaStreamError:
                self.close_soon("peer audio track ended")
                return
            except TimeoutError:
                self.close_soon(f"no audio from the peer for {self.config.idle_timeout_s:g} s")
                return
            t = time.monotonic()
            low, full = ingest.push_frame(frame)
            self.push_audio(low, t, full_band=full)

    def discard_track(self, track: MediaStreamTrack) -> None:
        """Read and drop an incoming track the session does not use (unread, it would queue frames
        forever); the reader ends with the track or the session."""
        self._spawn(_drain(track), "discard")

    # -- output consumers ----------------------------------------------------------------------
    def add_webrtc_consumer(self, name: str = "peer") -> tuple[AvatarVideoTrack, SyncedAudioTrack]:
        first = not self._video_tracks
        video = AvatarVideoTrack(self.fanout.subscribe(f"{name}-video"), self.clock,
                                 on_sent=self._on_video_sent if first else None)
        audio = SyncedAudioTrack(self.fanout.subscribe(f"{name}-audio"), self.clock)
        self._video_tracks.append(video)
        self._audio_tracks.append(audio)
        return video, audio

    # -- stats ---------------------------------------------------------------------------------
    def _on_slot(self, slot: OutputSlot, onset_arrivals: list[float]) -> None:
        now = time.monotonic()
        self._slot_times.append(now)
        if self.state == "starting":
            self.state = "live"
        if self.first_frame_latency is None and self.first_audio_at is not None:
            self.first_frame_latency = now - self.first_audio_at
            self.metrics.first_frame_latency.observe(self.first_frame_latency)
            timings, added_at = self.playout.emitted_timing
            self.first_frame_budget = first_frame_stages(self.first_audio_at, timings, added_at, now)
            log.info("session %s: first frame after %.0f ms (%s)", self.id, self.first_frame_latency * 1000,
                     ", ".join(f"{k} {v:.0f}" for k, v in self.first_frame_budget.items() if k != "total"))
        if onset_arrivals:
            timings, added_at = self.playout.emitted_timing
            self.latency_budget.slot_published(
                slot.slot, onset_arrivals, timings, self._pushed_at, added_at, now,
                wait_for_send=bool(self._video_tracks) and self._video_tracks[0].readyState == "live")
        for arrival in onset_arrivals:
            latency = now - arrival
            self.speech_to_lips.append(latency)
            self.metrics.speech_to_lips_latency.observe(latency)
            log.info("session %s: speech to lips %.0f ms", self.id, latency * 1000)
        if slot.slot % self.stream.fps == 0:
            self.report_counters()
        try:
            if not slot.repeated:
                self.stream.note_played(slot.frame_index, slot.due)
        except Exception:
            log.exception("session %s: note_played failed", self.id)
        for listener in self._slot_listeners:
            try:
                listener(slot)
            except Exception:
                log.exception("session %s: slot listener failed", self.id)

    def _on_video_sent(self, slot: OutputSlot) -> None:
        self.latency_budget.slot_sent(slot.slot, time.monotonic())

    def report_counters(self) -> None:
        """Move playout counters into the process-wide Prometheus counters (deltas)."""
        c = self.playout.counters
        for key, value, counter in (
            ("sent", c.frames_sent, self.metrics.frames_sent),
            ("repeated", c.frames_repeated, self.metrics.frames_repeated),
            ("dropped", c.frames_dropped, self.metrics.frames_dropped),
        ):
            delta = value - self._reported[key]
            if delta > 0:
                counter.inc(delta)
                self._reported[key] = value

    def measured_fps(self) -> float | None:
        times = self._slot_times
        if len(times) < 2 or time.monotonic() - times[-1] > 1.0:
            return None if len(times) < 2 else 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def av_offset_ms(self) -> float | None:
        """Send time of a slot's audio minus send time of its video frame, for the latest slot
        both tracks of the first consumer have sent. Both carry the same frame by construction
        (same slot, same clock); this measures how far apart the two senders actually hand them
        to the network (positive: audio later)."""
        if not self._video_tracks or not self._audio_tracks:
            return None
        video, audio = self._video_tracks[0].send_times, self._audio_tracks[0].send_times
        common = set(video.slots()) & set(audio.slots())
        if not common:
            return None
        slot = max(common)
        return (audio.get(slot) - video.get(slot)) * 1000.0

    def video_send_gaps(self) -> dict[str, Any] | None:
        """Waits over 120 ms between two frames the first video track handed to its sender."""
        if not self._video_tracks:
            return None
        gaps = list(self._video_tracks[0].send_gaps)
        return {"count": len(gaps), "max_ms": max((g[1] for g in gaps), default=0.0), "events": gaps}

    def stats(self) -> dict[str, Any]:
        c = self.playout.counters
        s2l = sorted(self.speech_to_lips)

        def pct(q: float) -> float | None:
            return s2l[min(len(s2l) - 1, int(q * len(s2l)))] * 1000.0 if s2l else None

        try:
            stream_stats = self.stream.stats()
        except Exception as exc:  # stats must never fail the endpoint
            stream_stats = {"error": str(exc)}
        return {
            "session_id": self.id,
            "state": self.state,
            "close_reason": self.close_reason,
            "uptime_s": round(time.monotonic() - self.created_at, 3),
            "first_frame_latency_ms": None if self.first_frame_latency is None else self.first_frame_latency * 1000.0,
            "first_frame_budget_ms": self.first_frame_budget,
            "speech_to_lips_latency_ms": {
                "last": self.speech_to_lips[-1] * 1000.0 if self.speech_to_lips else None,
                "p50": pct(0.5),
                "p90": pct(0.9),
                "count": len(s2l),
            },
            "fps": self.measured_fps(),
            "frames_sent": c.frames_sent,
            "frames_repeated": c.frames_repeated,
            "frames_dropped": c.frames_dropped,
            "slots": c.slots,
            "slots_skipped": c.slots_skipped,
            "latency_trims": c.trims,
            "frames_discarded_by_interrupt": c.discarded_by_interrupt,
            "latency_budget_ms": self.latency_budget.summary(),
            "av_offset_ms": self.av_offset_ms(),
            "video_send_gaps": self.video_send_gaps(),
            "playout_wait_ms": _summary_ms(self.playout.recent_waits),
            "playout_margin": (self.playout.margin.stats(self.config.playout_delay_ms / 1000.0)
                               if self.playout.margin is not None else {"adaptive": False}),
            "queues": {
                "playout_buffered_frames": self.playout.buffered_frames(),
                "consumers": {
                    sub.name: {"depth": sub.qsize(), "dropped": sub.dropped, "skipped_stale": sub.skipped_stale}
                    for sub in self.fanout.subscribers
                },
            },
            "stream": stream_stats,
            "capacity": self.capacity_stats() if self.capacity_stats is not None else None,
            **{name: section() for name, section in self.stats_sections.items()},
        }
