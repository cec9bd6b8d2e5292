"""``StreamSession``: drives one engine's ``BlockGenerator`` on the real-time schedule of DESIGN.md §2.

Threads: the asyncio side (push_audio, end_of_speech, interrupt, note_played, chunks, stats) only
moves buffers under a short lock; a worker thread waits for each block's input (or its deadline),
calls the synchronous ``generate()`` and queues the chunk. Block j covers frames
[jB, (j+1)B) plus the generator's context/lookahead samples.

Schedule of block f (first frame f, B frames, S samples a frame, lookahead L):
  * due for playout at first_ready + playout_margin_s + (f - f_first)/fps (the consumer starts
    its clock when the first chunk arrives);
  * ready when the timeline holds samples up to (f+B)*S + L. If the input is late, a live block
    waits until t0 + ((f+B)*S + L)/sr + input_jitter_s (never past half a block after its
    playout), then pads silence: idle blocks keep coming at real-time pace with no input;
  * buffered mode (a producer ahead of real time): generated as soon as its audio is there, but
    at most max(buffered_lead_s, one block) before its playout;
  * a worker more than a block behind the playout skips whole blocks ahead (counted, never
    generated) instead of letting latency grow.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from live_avatar.core.audio.timeline import AudioTimeline
from live_avatar.core.audio.vad import VoiceActivityDetector
from live_avatar.core.contract import AudioBlock, BlockGenerator, BlockTimings, Chunk
from live_avatar.core.stream.config import StreamConfig
from live_avatar.core.stream.input_clock import LiveInputClock

logger = logging.getLogger(__name__)

# push_audio's t_arrival sanity window: packets are stamped on arrival and pushed right away.
MAX_ARRIVAL_AGE_S = 30.0
MAX_ARRIVAL_AHEAD_S = 5.0


class BufferFullError(RuntimeError):
    """Buffered mode: the producer pushed more not-yet-played audio than the session may hold."""


class StreamSessionError(RuntimeError):
    """The session's generator failed; the session is over (see ``stats()['error']``)."""


@dataclass
class _Job:
    block: AudioBlock
    epoch: int
    audio_ready_at: float
    onset_arrivals: list[float]
    reset_motion: bool


class StreamSession:
    """One live session: audio in (``push_audio``), chunks of frames out (``chunks()``)."""

    def __init__(
        self,
        generator: BlockGenerator,
        *,
        fps: int = 25,
        sample_rate: int = 16000,
        config: StreamConfig | None = None,
    ):
        if fps <= 0 or sample_rate <= 0 or sample_rate % fps:
            raise ValueError(f"sample_rate ({sample_rate}) must be a positive multiple of fps ({fps})")
        block_frames = int(getattr(generator, "block_frames", 0))
        context = int(getattr(generator, "context_samples", -1))
        lookahead = int(getattr(generator, "lookahead_samples", -1))
        if block_frames < 1 or context < 0 or lookahead < 0:
            raise ValueError(
                "generator must define block_frames >= 1, context_samples >= 0, lookahead_samples >= 0 "
                f"(got {block_frames}, {context}, {lookahead})"
            )
        self.generator = generator
        self.config = config or StreamConfig()
        self.fps = fps
        self.sample_rate = sample_rate
        self.samples_per_frame = sample_rate // fps
        self.block_frames = block_frames
        self._context = context
        self._lookahead = lookahead

        self._cond = threading.Condition()
        self._timeline = AudioTimeline(sample_rate)
        self._clock = LiveInputClock(sample_rate)
        self._vad = VoiceActivityDetector(sample_rate, self.samples_per_frame, self.config.vad)
        self._vad_next_frame = 0
        self._speech_flags: dict[int, bool] = {}
        # Speech onsets (frame, arrival) waiting for the block that shows them, and those already
        # handed out with a block that may still be dropped by an interrupt (live mode re-issues them).
        self._pending_onsets: deque[tuple[int, float]] = deque(maxlen=64)
        self._issued_onsets: deque[tuple[int, float]] = deque(maxlen=64)
        self._out: deque[Chunk] = deque()
        self._next_frame = 0  # first frame of the next block to generate
        self._in_progress: int | None = None  # first frame of the block being generated
        self._played_frame = -1
        self._epoch = 0  # bumped by interrupt(); results of older epochs are discarded
        self._reset_motion = False
        self._eos_sample: int | None = None
        self._first_ready: float | None = None
        self._first_ready_frame = 0

        self._state = "created"  # created -> running -> closed | error
        self._error: str | None = None
        self._exception: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._generator_closed = False
        self._close_generator_on_exit = False
        self._worker_done = False
        self._last_slack_s: float | None = None  # playout due - ready time of the last block

        self._loop: asyncio.AbstractEventLoop | None = None
        self._chunk_event: asyncio.Event | None = None
        self._consuming = False

        self._stat_blocks = 0
        self._stat_idle_blocks = 0
        self._stat_frames = 0
        self._stat_skipped = 0
        self._stat_padded = 0
        self._stat_late_dropped = 0
        self._stat_onsets = 0
        self._stat_interrupts = 0
        self._stat_chunks_dropped = 0
        self._compute_s: deque[float] = deque(maxlen=self.config.stats_window)

    # ------------------------------------------------------------------ producer side (event loop)
    def start(self, t0: float | None = None) -> None:
        """Anchor the timeline at ``t0`` (default: now) and start producing blocks (idle ones if no
        audio comes). Optional: the first ``push_audio`` starts the session too."""
        with self._cond:
            self._start_locked(time.monotonic() if t0 is None else float(t0))

    def push_audio(self, samples: np.ndarray, t_arrival: float | None = None) -> None:
        """Append 16 kHz mono float32 speech that arrived at ``t_arrival`` (default: now).

        Never blocks. Raises ValueError on malformed samples and, in buffered mode,
        BufferFullError when more than ``max_buffered_audio_s`` would wait to be generated.
        """
        samples = _as_mono_float32(samples)
        now = time.monotonic()
        t = now if t_arrival is None else float(t_arrival)
        if not now - MAX_ARRIVAL_AGE_S <= t <= now + MAX_ARRIVAL_AHEAD_S:
            raise ValueError(f"t_arrival must be a time.monotonic() reading near now ({now:.3f}), got {t:.3f}")
        n = samples.shape[0]
        if n == 0:
            return
        with self._cond:
            if self._closing or self._state == "error":
                return  # a producer racing close(): nothing to do with its audio
            if self._thread is None:
                # Live: sample i nominally arrives at t0 + i/sr, so the packet's first sample is
                # n/sr older than its arrival. Buffered: the producer is ahead of real time, so its
                # first push marks the start of playback.
                self._start_locked(now if self.config.buffered else t - n / self.sample_rate)
            cursor = self._timeline.write_cursor
            if self.config.buffered:
                waiting = cursor + n - self._next_frame * self.samples_per_frame
                if waiting > self.config.max_buffered_audio_s * self.sample_rate:
                    raise BufferFullError(
                        f"{waiting / self.sample_rate:.1f} s of audio would wait to be played; the limit is "
                        f"{self.config.max_buffered_audio_s:.1f} s (push slower or interrupt first)"
                    )
            else:
                drop = self._clock.samples_to_drop(cursor, n, t)
                if drop:
                    self._stat_late_dropped += drop
                    samples = samples[drop:]
            self._timeline.append(samples, t)
            self._cond.notify_all()

    def end_of_speech(self) -> None:
        """Hint: the utterance pushed so far is complete (buffered mode stops waiting for more)."""
        with self._cond:
            self._eos_sample = self._timeline.write_cursor
            self._cond.notify_all()

    def interrupt(self) -> float:
        """Barge-in: drop queued chunks (and, buffered, pushed audio not yet generated); motion
        returns to idle. Returns the playback position in seconds (frames noted as played)."""
        with self._cond:
            position = (self._played_frame + 1) / self.fps if self._played_frame >= 0 else 0.0
            if self._thread is None or self._closing or self._state == "error":
                return position
            self._stat_interrupts += 1
            self._epoch += 1
            self._stat_chunks_dropped += len(self._out)
            restart = self._restart_frame()
            self._out.clear()
            self._next_frame = restart
            self._in_progress = None
            if self.config.buffered:
                # The unplayed speech is gone; what comes next is a new utterance after silence.
                self._timeline.truncate(restart * self.samples_per_frame)
                self._vad_next_frame = min(self._vad_next_frame, restart)
                self._vad.reset()
                for k in [k for k in self._speech_flags if k >= restart]:
                    del self._speech_flags[k]
                self._pending_onsets = deque(
                    (o for o in self._pending_onsets if o[0] < restart), maxlen=self._pending_onsets.maxlen
                )
            else:
                # The live audio stays and is generated again: so are the onsets it held.
                again = [o for o in self._issued_onsets if o[0] >= restart]
                self._pending_onsets = deque(
                    sorted(again + list(self._pending_onsets)), maxlen=self._pending_onsets.maxlen
                )
            self._issued_onsets.clear()
            self._eos_sample = None
            self._reset_motion = True
            self._cond.notify_all()
        return position

    def _restart_frame(self) -> int:
        """Where generation resumes after an interrupt (lock held).

        The consumer drops what it buffered too, so frames resume right after the last one shown
        (note_played); without that information, from the first frame it has not received (the
        dropped chunks, or the block in progress). Never before what the timeline still holds."""
        if self._played_frame >= 0:
            restart = min(self._played_frame + 1, self._next_frame)
        else:
            candidates = [c.first_frame for c in self._out]
            if self._in_progress is not None:
                candidates.append(self._in_progress)
            restart = min(candidates, default=self._next_frame)
        held_from = self._timeline.start_index + self._context
        if self._timeline.start_index > 0 and restart * self.samples_per_frame < held_from:
            restart = min(-(-held_from // self.samples_per_frame), self._next_frame)
        return restart

    def note_played(self, frame_index: int) -> None:
        """The consumer showed frame ``frame_index`` (feeds interrupt()'s playback position)."""
        with self._cond:
            self._played_frame = max(self._played_frame, int(frame_index))

    # ------------------------------------------------------------------ consumer side
    async def chunks(self) -> AsyncIterator[Chunk]:
        """Chunks in frame order. Ends after close(); raises StreamSessionError if the generator
        failed (after the chunks made before the failure)."""
        with self._cond:
            if self._consuming:
                raise RuntimeError("chunks() has a single consumer and is already being iterated")
            self._consuming = True
            self._loop = asyncio.get_running_loop()
            self._chunk_event = asyncio.Event()
        try:
            while True:
                with self._cond:
                    chunk = self._out.popleft() if self._out else None
                    if chunk is not None:
                        self._cond.notify_all()  # room in the queue for the worker
                    elif self._state == "error":
                        raise StreamSessionError(f"stream session failed: {self._error}") from self._exception
                    elif self._closing:
                        return
                    else:
                        self._chunk_event.clear()
                if chunk is None:
                    await self._chunk_event.wait()
                    continue
                yield chunk
        finally:
            with self._cond:
                self._consuming = False

    def stats(self) -> dict:
        with self._cond:
            compute_ms = np.asarray(self._compute_s, np.float64) * 1000.0
            cursor = self._timeline.write_cursor
            return {
                "state": self._state,
                "error": self._error,
                "mode": "buffered" if self.config.buffered else "live",
                "block_frames": self.block_frames,
                "blocks": self._stat_blocks,
                "idle_blocks": self._stat_idle_blocks,
                "frames_generated": self._stat_frames,
                "frames_skipped": self._stat_skipped,
                "next_frame": self._next_frame,
                "played_frame": self._played_frame,
                "compute_ms_p50": float(np.median(compute_ms)) if compute_ms.size else None,
                "compute_ms_max": float(compute_ms.max()) if compute_ms.size else None,
                "playout_slack_ms": None if self._last_slack_s is None else self._last_slack_s * 1000.0,
                "output_queue": len(self._out),
                "output_queue_max": self.config.output_queue_chunks,
                "input_backlog_s": max(cursor - self._next_frame * self.samples_per_frame, 0) / self.sample_rate,
                "padded_silence_s": self._stat_padded / self.sample_rate,
                "late_input_dropped_s": self._stat_late_dropped / self.sample_rate,
                "speech_onsets": self._stat_onsets,
                "interrupts": self._stat_interrupts,
                "chunks_dropped_by_interrupt": self._stat_chunks_dropped,
            }

    @property
    def state(self) -> str:
        return self._state

    @property
    def worker_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    async def close(self) -> None:
        """Stop the worker (waiting for a generate() in progress) and close the generator."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            if self._state != "error":
                self._state = "closed"
            thread = self._thread
            self._cond.notify_all()
        if self._chunk_event is not None:
            self._chunk_event.set()
        if thread is not None:
            await asyncio.to_thread(thread.join, self.config.close_timeout_s)
            with self._cond:
                if not self._worker_done:  # still inside generate(): let the worker close it
                    self._close_generator_on_exit = True
                    logger.warning("stream worker still busy %.1f s after close(); it closes the generator when done",
                                   self.config.close_timeout_s)
                    return
        await asyncio.to_thread(self._close_generator)

    async def __aenter__(self) -> "StreamSession":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    # ------------------------------------------------------------------ worker thread
    def _start_locked(self, t0: float) -> None:
        if self._thread is not None:
            return
        if self._closing:
            raise RuntimeError("the stream session is closed")
        self._clock.anchor(t0)
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name=f"stream-session-{id(self):x}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                job = self._wait_for_job()
                if job is None:
                    break
                self._run_job(job)
        except BaseException as exc:  # noqa: BLE001 - any failure ends the session visibly
            logger.exception("stream session worker failed")
            with self._cond:
                self._exception = exc
                self._error = f"{type(exc).__name__}: {exc}"
                self._state = "error"
                self._cond.notify_all()
        finally:
            self._signal_consumer()
            with self._cond:
                self._worker_done = True
                close_now = self._close_generator_on_exit
            if close_now:
                self._close_generator()

    def _wait_for_job(self) -> _Job | None:
        cfg = self.config
        S, B, L = self.samples_per_frame, self.block_frames, self._lookahead
        with self._cond:
            while True:
                if self._closing:
                    return None
                now = time.monotonic()
                f = self._next_frame
                need = (f + B) * S + L  # the block's last sample + lookahead
                self._analyze_vad(need)
                if not cfg.buffered and self._skip_live_backlog():
                    continue
                if len(self._out) >= cfg.output_queue_chunks:
                    self._cond.wait(0.5)  # the consumer's pop notifies
                    continue
                if self._first_ready is not None:  # behind the playout by more than a block: skip
                    late = now - self._playout_due(f)
                    if late > B / self.fps:
                        blocks = max(1, math.ceil((late + self._expected_compute()) * self.fps / B))
                        self._skip_to(f + blocks * B)
                        continue
                if cfg.buffered and self._first_ready is not None:
                    lead = max(cfg.buffered_lead_s, B / self.fps)
                    start_at = self._playout_due(f) - lead
                    if now < start_at:
                        self._cond.wait(start_at - now)
                        continue
                cursor = self._timeline.write_cursor
                if cursor >= need:
                    ready_at = self._timeline.arrival_time(need - 1)
                else:
                    due = self._input_deadline(f, need)
                    if now < due and not self._utterance_ended_in(f):
                        self._cond.wait(due - now)
                        continue
                    padded = self._timeline.pad_silence_to(need, now)
                    self._stat_padded += padded
                    if not cfg.buffered:
                        self._clock.note_padding(padded)
                    ready_at = now
                self._analyze_vad(need)
                return self._make_job(f, ready_at)

    def _playout_due(self, f: int) -> float:
        """When frame ``f`` is due on screen: the first chunk's ready time + margin + frames/fps."""
        return self._first_ready + self.config.playout_margin_s + (f - self._first_ready_frame) / self.fps

    def _expected_compute(self) -> float:
        return float(np.median(self._compute_s)) if self._compute_s else 0.0

    def _input_deadline(self, f: int, need: int) -> float:
        """Until when block ``f`` waits for missing input before padding silence.

        Live: the nominal arrival of its last sample + input_jitter_s (padding drops real speech
        from the outgoing audio too, so wait the full allowance), but never so long that the
        catch-up rule would fire: at most half a block past its playout. Buffered: the producer
        is ahead of real time by design, so only the playout paces blocks without audio; they are
        made just in time (due - expected compute - a small guard).
        """
        cfg = self.config
        t_input = self._clock.due(need) + cfg.input_jitter_s
        if self._first_ready is None:
            return t_input
        due = self._playout_due(f)
        if cfg.buffered:
            guard = min(cfg.playout_margin_s / 2, self.block_frames / self.fps)
            return due - self._expected_compute() - guard
        return min(t_input, due + self.block_frames / (2 * self.fps))

    def _utterance_ended_in(self, f: int) -> bool:
        """Buffered: end_of_speech() was said inside this block's window, so no more audio is
        coming for it; generate now instead of waiting for the real-time deadline."""
        eos = self._eos_sample
        return self.config.buffered and eos is not None and eos > f * self.samples_per_frame

    def _make_job(self, f: int, ready_at: float) -> _Job:
        S, B = self.samples_per_frame, self.block_frames
        need = (f + B) * S + self._lookahead
        samples = self._timeline.read(f * S - self._context, need)
        speech = np.array([self._speech_flags.get(k, False) for k in range(f, f + B)], bool)
        issued = [o for o in self._pending_onsets if o[0] < f + B]
        self._issued_onsets.extend(issued)
        onsets = [t for _, t in issued]
        self._pending_onsets = deque(
            (o for o in self._pending_onsets if o[0] >= f + B), maxlen=self._pending_onsets.maxlen
        )
        end_of_speech = self._eos_sample is not None and self._eos_sample <= need
        if end_of_speech:
            self._eos_sample = None
        block = AudioBlock(
            samples=samples,
            first_frame=f,
            num_frames=B,
            context=self._context,
            lookahead=self._lookahead,
            speech=speech,
            end_of_speech=end_of_speech,
        )
        reset, self._reset_motion = self._reset_motion, False
        self._in_progress = f
        return _Job(block, self._epoch, ready_at, onsets, reset)

    def _run_job(self, job: _Job) -> None:
        if job.reset_motion:
            self.generator.reset_motion_to_idle()
        block = job.block
        started = time.monotonic()
        frames = self.generator.generate(block)
        finished = time.monotonic()
        frames = _check_frames(frames, block.num_frames)
        chunk = Chunk(
            frames=frames,
            audio=block.frame_samples(self.samples_per_frame).copy(),
            first_frame=block.first_frame,
            speech=block.speech.copy(),
            timings=BlockTimings(
                audio_ready_at=job.audio_ready_at,
                started_at=started,
                finished_at=finished,
                compute_s=finished - started,
            ),
            speech_onset_arrivals=job.onset_arrivals,
        )
        with self._cond:
            self._compute_s.append(finished - started)
            if job.epoch != self._epoch:
                return  # interrupted meanwhile: interrupt() already rewound next_frame
            self._in_progress = None
            self._out.append(chunk)
            self._next_frame = block.first_frame + block.num_frames
            self._stat_blocks += 1
            self._stat_frames += block.num_frames
            if not block.speech.any():
                self._stat_idle_blocks += 1
            if self._first_ready is None:
                self._first_ready, self._first_ready_frame = finished, block.first_frame
            self._last_slack_s = self._playout_due(block.first_frame) - finished
            self._trim_timeline()
            self._cond.notify_all()
        self._signal_consumer()

    # ------------------------------------------------------------------ worker helpers (lock held)
    def _skip_to(self, frame: int) -> None:
        self._stat_skipped += frame - self._next_frame
        logger.debug("behind real time: skipping frames %d..%d", self._next_frame, frame - 1)
        self._next_frame = frame
        self._trim_timeline()

    def _skip_live_backlog(self) -> bool:
        """Live: when arrived audio piles up (stalled consumer, fast sender clock), jump to the
        newest complete block so memory and latency stay bounded."""
        S, B = self.samples_per_frame, self.block_frames
        backlog = self._timeline.write_cursor - self._next_frame * S
        if backlog <= self.config.max_live_backlog_s * self.sample_rate:
            return False
        newest = (self._timeline.write_cursor - self._lookahead) // S - B
        target = max(self._next_frame + B, newest - newest % B)
        self._skip_to(target)
        return True

    def _trim_timeline(self) -> None:
        # Keep what an interrupt may regenerate (everything after the last frame shown, delivered
        # or not) plus the next block's context, but never more than the backlog bound.
        S = self.samples_per_frame
        oldest = min(self._played_frame + 1, self._next_frame)
        keep_from = max(oldest * S, self._next_frame * S - int(self.config.max_live_backlog_s * self.sample_rate))
        self._timeline.trim_before(keep_from - self._context)
        for k in [k for k in self._speech_flags if k < keep_from // S]:
            del self._speech_flags[k]

    def _analyze_vad(self, upto_sample: int) -> None:
        """Run the VAD over complete frames not yet analysed, up to ``upto_sample``."""
        S = self.samples_per_frame
        limit = min(self._timeline.write_cursor, upto_sample) // S
        k = max(self._vad_next_frame, -(-self._timeline.start_index // S))
        while k < limit:
            result = self._vad.process(self._timeline.read(k * S, (k + 1) * S))
            self._speech_flags[k] = result.speech
            if result.onset:
                self._stat_onsets += 1
                first_loud = max(k * S + result.onset_offset, self._timeline.start_index)
                self._pending_onsets.append((k, self._timeline.arrival_time(first_loud)))
            k += 1
        self._vad_next_frame = max(self._vad_next_frame, k)

    # ------------------------------------------------------------------ misc
    def _signal_consumer(self) -> None:
        loop, event = self._loop, self._chunk_event
        if loop is None or event is None:
            return
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:
            pass  # the consumer's loop is closed: nobody to wake

    def _close_generator(self) -> None:
        with self._cond:
            if self._generator_closed:
                return
            self._generator_closed = True
        try:
            self.generator.close()
        except Exception:  # noqa: BLE001 - closing must not raise into the server
            logger.exception("generator.close() failed")


def _as_mono_float32(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples)
    if arr.ndim != 1:
        raise ValueError(f"push_audio expects 1-D mono samples, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"push_audio expects float samples in [-1, 1], got {arr.dtype} (use AudioIngest.push_pcm for PCM)"
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("push_audio got NaN or infinite samples")
    return arr


def _check_frames(frames: np.ndarray, num_frames: int) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        desc = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
        raise TypeError(f"generate() must return uint8 [N, H, W, 3] frames, got {desc}")
    if frames.shape[0] != num_frames:
        raise ValueError(f"generate() returned {frames.shape[0]} frames for a block of {num_frames}")
    return frames
