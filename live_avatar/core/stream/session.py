"""``StreamSession``: drives one engine's ``BlockGenerator`` on the real-time schedule of DESIGN.md §2.

Threads: the asyncio side (push_audio, end_of_speech, interrupt, note_played, chunks, stats) only
moves buffers under a short lock; a worker thread waits for each block's input (or its deadline),
calls the synchronous ``generate()`` and queues the chunk. Block j covers frames
[jB, (j+1)B) plus the generator's context/lookahead samples.

A generator that pipelines (``submit()`` / ``collect()`` and a ``pipeline_depth``: liveavatar over
``--num_gpus_dit N``) gets up to ``max_blocks_in_flight`` blocks at once: the worker submits each
block as soon as its input is there, and a collector thread takes the frames out in order. A block
then costs the real-time budget what its busiest stage spent on it (the generator's
``block_cost_s`` after ``collect()``), not its whole trip through the ranks.

The schedule (playout due times, input deadlines, catch-up skips) is ``BlockSchedule``
(schedule.py): with no input, idle blocks keep coming at real-time pace; a buffered producer ahead
of real time is generated as soon as its audio is there but a bounded lead before its playout; a
worker behind the playout skips whole blocks (counted, never generated) instead of letting latency
grow. Speech flags, onsets and end of speech live in ``SpeechTracker`` (onsets.py), the counters
and the ``stats()`` dictionary in stats.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from live_avatar.core.audio.timeline import AudioTimeline
from live_avatar.core.contract import AudioBlock, BlockGenerator, BlockTimings, ChangeNotSupported, Chunk
from live_avatar.core.stream.budget import ComputeBudget
from live_avatar.core.stream.config import StreamConfig
from live_avatar.core.stream.input_clock import LiveInputClock
from live_avatar.core.stream.onsets import SpeechTracker
from live_avatar.core.stream.schedule import BlockSchedule
from live_avatar.core.stream.stats import SessionCounters, session_stats

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
    onsets: list[tuple[int, float]]  # (frame offset in the block, arrival) of the speech onsets it shows
    reset_motion: bool
    change: tuple | None = None  # (avatar, prompt, on_applied) to apply before this block
    full_band: np.ndarray | None = None
    first_out_at: float | None = None  # a block made in parts: when its first part was queued


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
        self._budget = ComputeBudget(block_frames / fps, name=f"{type(generator).__name__} session")
        self._depth = _blocks_in_flight(generator, self.config.max_blocks_in_flight)
        self._in_flight: deque[tuple[_Job, float]] = deque()  # submitted, not collected: (job, submitted at)
        self._in_flight_max = 0
        self._last_delivered_at: float | None = None
        self._collector: threading.Thread | None = None
        self._context = context
        self._lookahead = lookahead

        self._cond = threading.Condition()
        self._timeline = AudioTimeline(sample_rate)
        self._clock = LiveInputClock(sample_rate)
        self._schedule = BlockSchedule(
            self.config, self._clock, fps=fps, sample_rate=sample_rate, block_frames=block_frames, lookahead=lookahead
        )
        self._speech = SpeechTracker(
            self._timeline, self.samples_per_frame, self.config.vad, buffered=self.config.buffered
        )
        rate = self.config.full_band_rate
        if rate % sample_rate:
            raise ValueError(f"full_band_rate ({rate}) must be a multiple of sample_rate ({sample_rate})")
        self._fb_ratio = rate // sample_rate
        self._full_band: AudioTimeline | None = None  # created by the first push that carries one
        self._out: deque[Chunk] = deque()
        self._next_frame = 0  # first frame of the next block to generate
        self._in_progress: int | None = None  # first frame of the block being generated
        self._played_frame = -1
        self._epoch = 0  # bumped by interrupt(); results of older epochs are discarded
        self._reset_motion = False
        self._pending_change: tuple | None = None  # change_avatar() waiting for the next block
        self._pushed_until = 0  # buffered: timeline index after the last pushed sample

        self._state = "created"  # created -> running -> closed | error
        self._error: str | None = None
        self._exception: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._generator_closed = False
        self._close_generator_on_exit = False
        self._worker_done = False

        self._loop: asyncio.AbstractEventLoop | None = None
        self._chunk_event: asyncio.Event | None = None
        self._consuming = False
        self._counters = SessionCounters()

    # ------------------------------------------------------------------ producer side (event loop)
    def start(self, t0: float | None = None) -> None:
        """Anchor the timeline at ``t0`` (default: now) and start producing blocks (idle ones if no
        audio comes). Optional: the first ``push_audio`` starts the session too."""
        with self._cond:
            self._start_locked(time.monotonic() if t0 is None else float(t0))

    def push_audio(self, samples: np.ndarray, t_arrival: float | None = None,
                   full_band: np.ndarray | None = None) -> int | None:
        """Append 16 kHz mono float32 speech that arrived at ``t_arrival`` (default: now).

        ``full_band``: the same speech at ``config.full_band_rate`` (exactly ratio x as many
        samples), kept beside the engine's copy and handed out with the chunks for the outgoing
        audio. Returns the timeline index of the first sample appended (frame k plays samples
        [k*S, (k+1)*S)), None when nothing was appended. Never blocks. Raises ValueError on
        malformed samples and, in buffered mode, BufferFullError when more than
        ``max_buffered_audio_s`` would wait to be generated.
        """
        samples = _as_mono_float32(samples)
        if full_band is not None:
            full_band = _as_mono_float32(full_band)
            if full_band.shape[0] != samples.shape[0] * self._fb_ratio:
                raise ValueError(f"full_band has {full_band.shape[0]} samples for {samples.shape[0]} at "
                                 f"{self.sample_rate} Hz; expected {samples.shape[0] * self._fb_ratio}")
        now = time.monotonic()
        t = now if t_arrival is None else float(t_arrival)
        if not now - MAX_ARRIVAL_AGE_S <= t <= now + MAX_ARRIVAL_AHEAD_S:
            raise ValueError(f"t_arrival must be a time.monotonic() reading near now ({now:.3f}), got {t:.3f}")
        n = samples.shape[0]
        if n == 0:
            return None
        with self._cond:
            if self._closing or self._state == "error":
                return None  # a producer racing close(): nothing to do with its audio
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
                    self._counters.late_dropped += drop
                    samples = samples[drop:]
                    full_band = None if full_band is None else full_band[drop * self._fb_ratio :]
            self._append(samples, full_band, t)
            self._pushed_until = cursor + samples.size
            self._cond.notify_all()
            return cursor if samples.size else None

    def change_avatar(self, avatar=None, prompt: str | None = None, on_applied=None) -> None:
        """Switch the portrait and/or prompt at the next block (None: unchanged). ``on_applied(frame,
        error)`` is called from the worker thread once the generator took it: ``frame`` is the first
        frame that shows it. Raises ChangeNotSupported when the generator cannot change them."""
        if not callable(getattr(self.generator, "change_avatar", None)):
            raise ChangeNotSupported("this engine cannot change the avatar or prompt of a running session")
        with self._cond:
            if self._closing or self._state == "error":
                raise RuntimeError("the stream session is closed")
            if self._pending_change is not None:  # one not yet applied: merged, the newer values win
                earlier_avatar, earlier_prompt, _ = self._pending_change
                avatar = earlier_avatar if avatar is None else avatar
                prompt = earlier_prompt if prompt is None else prompt
            self._pending_change = (avatar, prompt, on_applied)
            self._cond.notify_all()

    def _append(self, samples: np.ndarray, full_band: np.ndarray | None, t: float) -> None:
        """Write both copies (lock held); the full-band one always spans ratio x the timeline."""
        r = self._fb_ratio
        if full_band is not None and self._full_band is None:
            self._full_band = AudioTimeline(self.sample_rate * r)
            self._full_band.start_at(self._timeline.write_cursor * r)
        self._timeline.append(samples, t)
        fb = self._full_band
        if fb is None:
            return
        if full_band is None:  # a producer without a full-band copy: interpolate the engine's
            n = samples.shape[0]
            full_band = np.interp(np.arange(n * r) / r, np.arange(n), samples).astype(np.float32) if n else samples
        fb.pad_silence_to(self._timeline.write_cursor * r - full_band.shape[0], t)
        fb.append(full_band, t)

    def end_of_speech(self) -> None:
        """Hint: the utterance pushed so far is complete (buffered mode stops waiting for more)."""
        with self._cond:
            self._speech.mark_end_of_speech(self._timeline.write_cursor)
            self._cond.notify_all()

    def interrupt(self) -> float:
        """Barge-in: drop queued chunks (and, buffered, pushed audio not yet generated); motion
        returns to idle. Returns the playback position in seconds (frames noted as played)."""
        with self._cond:
            position = (self._played_frame + 1) / self.fps if self._played_frame >= 0 else 0.0
            if self._thread is None or self._closing or self._state == "error":
                return position
            self._counters.interrupts += 1
            self._epoch += 1
            self._counters.chunks_dropped += len(self._out)
            restart = self._restart_frame()
            self._out.clear()
            self._next_frame = restart
            self._in_progress = None
            if self.config.buffered:
                # The unplayed speech is gone; what comes next is a new utterance after silence.
                self._timeline.truncate(restart * self.samples_per_frame)
                self._pushed_until = min(self._pushed_until, restart * self.samples_per_frame)
                if self._full_band is not None:
                    self._full_band.truncate(restart * self.samples_per_frame * self._fb_ratio)
            self._speech.rewind(restart)  # live: the audio stays and is generated again, onsets too
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
            candidates += [job.block.first_frame for job, _ in self._in_flight if job.epoch == self._epoch]
            if self._in_progress is not None:
                candidates.append(self._in_progress)
            restart = min(candidates, default=self._next_frame)
        held_from = self._timeline.start_index + self._context
        if self._timeline.start_index > 0 and restart * self.samples_per_frame < held_from:
            restart = min(-(-held_from // self.samples_per_frame), self._next_frame)
        return restart

    def note_played(self, frame_index: int, due: float | None = None) -> None:
        """The consumer showed frame ``frame_index`` (feeds interrupt()'s playback position), in a slot
        due at ``due`` (time.monotonic()) if it says: the schedule's due times follow its slots."""
        with self._cond:
            self._played_frame = max(self._played_frame, int(frame_index))
            if due is not None:
                self._schedule.note_shown(int(frame_index), float(due))

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
            stats = session_stats(
                self._counters,
                state=self._state,
                error=self._error,
                buffered=self.config.buffered,
                block_frames=self.block_frames,
                sample_rate=self.sample_rate,
                next_frame=self._next_frame,
                played_frame=self._played_frame,
                compute_s=self._schedule.compute_s,
                first_out_s=self._schedule.first_out_s,
                playout_slack_s=self._schedule.last_slack_s,
                output_queue=len(self._out),
                output_queue_max=self.config.output_queue_chunks,
                input_backlog_samples=self._timeline.write_cursor - self._next_frame * self.samples_per_frame,
            )
            stats.update(self._budget.stats())
            stats.update(max_blocks_in_flight=self._depth, blocks_in_flight_max=self._in_flight_max)
        engine_stats = getattr(self.generator, "engine_stats", None)  # engine-specific figures, optional
        if callable(engine_stats):
            stats["engine"] = engine_stats()
        return stats

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
            if self._depth > 1:
                self._collector = threading.Thread(target=self._collect_forever, daemon=True,
                                                   name=f"stream-collector-{id(self):x}")
                self._collector.start()
            while True:
                if self._depth > 1 and not self._wait_for_room():
                    break
                job = self._wait_for_job()
                if job is None:
                    break
                if self._depth > 1:
                    self._submit_job(job)
                else:
                    self._run_job(job)
        except BaseException as exc:  # noqa: BLE001 - any failure ends the session visibly
            self._fail(exc, "stream session worker failed")
        finally:
            if self._collector is not None:
                self._collector.join()  # it stops at close (or a failure) after the collect() it is in
            self._signal_consumer()
            with self._cond:
                self._worker_done = True
                close_now = self._close_generator_on_exit
            if close_now:
                self._close_generator()

    def _fail(self, exc: BaseException, what: str) -> None:
        logger.exception(what)
        with self._cond:
            if self._exception is None:
                self._exception = exc
                self._error = f"{type(exc).__name__}: {exc}"
            self._state = "error"
            self._cond.notify_all()

    def _stopping(self) -> bool:
        return self._closing or self._state == "error"

    def _wait_for_room(self) -> bool:
        """Pipelined: wait until fewer than max_blocks_in_flight blocks are in the pipe; False once
        the session stops."""
        with self._cond:
            while len(self._in_flight) >= self._depth and not self._stopping():
                self._cond.wait(0.5)
            return not self._stopping()

    def _wait_for_job(self) -> _Job | None:
        cfg, schedule = self.config, self._schedule
        with self._cond:
            while True:
                if self._stopping():
                    return None
                now = time.monotonic()
                f = self._next_frame
                need = schedule.window_end(f)
                self._analyze_vad(need)
                if not cfg.buffered:  # live: arrived audio piling up, jump to the newest block
                    target = schedule.live_backlog_target(f, self._timeline.write_cursor)
                    if target is not None:
                        self._skip_to(target)
                        continue
                if len(self._out) >= cfg.output_queue_chunks:
                    self._cond.wait(0.5)  # the consumer's pop notifies
                    continue
                input_late = None if cfg.buffered else self._input_lateness_s(need, now)
                target = schedule.catch_up_target(f, now, input_late)
                if target is not None and cfg.buffered and self._pushed_until > f * self.samples_per_frame:
                    target = None  # buffered: pushed speech is played late rather than skipped
                if target is not None:  # behind the playout by more than a block: skip
                    self._skip_to(target)
                    continue
                if not cfg.buffered and self._late_and_silent(f, need, now, input_late):  # lose a pause, not a word
                    self._counters.silent_skipped += self.block_frames
                    self._skip_to(f + self.block_frames)
                    continue
                start_at = schedule.buffered_start_at(f)
                if start_at is not None and now < start_at:
                    self._cond.wait(start_at - now)
                    continue
                cursor = self._timeline.write_cursor
                if cursor >= need:
                    ready_at = self._timeline.arrival_time(need - 1)
                else:
                    due = schedule.input_deadline(f, need)
                    if now < due and not self._speech.utterance_ended_in(f):
                        self._cond.wait(due - now)
                        continue
                    padded = self._timeline.pad_silence_to(need, now)
                    if self._full_band is not None:
                        self._full_band.pad_silence_to(need * self._fb_ratio, now)
                    self._counters.padded += padded
                    if not cfg.buffered:
                        self._clock.note_padding(padded)
                    ready_at = now
                self._analyze_vad(need)
                return self._make_job(f, ready_at)

    def _make_job(self, f: int, ready_at: float) -> _Job:
        S, B = self.samples_per_frame, self.block_frames
        need = self._schedule.window_end(f)
        samples = self._timeline.read(f * S - self._context, need)
        speech = self._speech.speech(f, B)
        onsets = self._speech.issue_onsets(f, f + B)
        end_of_speech = self._speech.take_end_of_speech(need)
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
        change, self._pending_change = self._pending_change, None
        self._in_progress = f
        full_band = None
        if self._full_band is not None:
            r = self._fb_ratio
            full_band = self._full_band.read(f * S * r, (f + B) * S * r)
        return _Job(block, self._epoch, ready_at, onsets, reset, change=change, full_band=full_band)

    def _apply_change(self, change: tuple, first_frame: int) -> None:
        """A change the generator refuses (a portrait of another size...) is reported, never fatal."""
        avatar, prompt, on_applied = change
        try:
            delay = int(self.generator.change_avatar(avatar, prompt) or 0)
            result: tuple = (first_frame + delay, None)
        except Exception as exc:  # noqa: BLE001 - the session goes on with what it had
            logger.warning("changing the avatar/prompt failed: %s", exc)
            result = (None, exc)
        if on_applied is not None:
            try:
                on_applied(*result)
            except Exception:  # noqa: BLE001
                logger.exception("change_avatar callback failed")

    def _prepare(self, job: _Job) -> None:
        if job.reset_motion:
            self.generator.reset_motion_to_idle()
        if job.change is not None:
            self._apply_change(job.change, job.block.first_frame)

    def _run_job(self, job: _Job) -> None:
        self._prepare(job)
        started = time.monotonic()
        generate_parts = getattr(self.generator, "generate_parts", None)
        if not callable(generate_parts):
            frames = self.generator.generate(job.block)
            self._deliver(job, frames, started, time.monotonic(), pipelined=False)
            return
        # a generator that makes a block's frames part by part (liveavatar: 4 per latent frame, as its VAE
        # decodes them): each part goes out when it is ready, the block's accounting comes with the last
        B, offset = job.block.num_frames, 0
        for frames in generate_parts(job.block):
            frames = _check_frames(frames, None)
            if not 0 < frames.shape[0] <= B - offset:
                raise ValueError(f"generate_parts() gave {frames.shape[0]} frames at frame {offset} of a block of {B}")
            if offset + frames.shape[0] < B:
                self._deliver_part(job, frames, offset, started, time.monotonic())
            else:
                self._deliver(job, frames, started, time.monotonic(), pipelined=False, offset=offset)
            offset += frames.shape[0]
        if offset != B:
            raise ValueError(f"generate_parts() gave {offset} frames for a block of {B}")

    def _submit_job(self, job: _Job) -> None:
        """Pipelined: hand the block to the generator; the collector delivers its frames."""
        self._prepare(job)
        started = time.monotonic()
        self.generator.submit(job.block)
        with self._cond:
            self._in_flight.append((job, started))
            self._in_flight_max = max(self._in_flight_max, len(self._in_flight))
            self._in_progress = None
            if job.epoch == self._epoch:  # else interrupt() has rewound next_frame already
                self._next_frame = job.block.first_frame + job.block.num_frames
            self._cond.notify_all()

    def _collect_forever(self) -> None:
        """Pipelined: the frames of the oldest block in flight, in order, until the session stops."""
        try:
            while True:
                with self._cond:
                    while not self._in_flight and not self._stopping():
                        self._cond.wait(0.5)
                    if self._stopping():
                        return  # closing the generator drops the blocks still in flight
                    job, started = self._in_flight[0]
                frames = self.generator.collect()
                finished = time.monotonic()
                cost = getattr(self.generator, "block_cost_s", None)
                with self._cond:
                    self._in_flight.popleft()
                    self._cond.notify_all()  # room in the pipe for the worker
                self._deliver(job, frames, started, finished, pipelined=True, cost=cost)
        except BaseException as exc:  # noqa: BLE001 - any failure ends the session visibly
            self._fail(exc, "stream session collector failed")

    def _deliver(self, job: _Job, frames: np.ndarray, started: float, finished: float, *, pipelined: bool,
                 cost: float | None = None, offset: int = 0) -> None:
        """Queue a finished block's chunk (from frame ``offset`` of the block on: the last part of a block
        made in parts). ``cost``: what the block took of the real-time budget (default: the time it ran,
        or for a pipe that does not say, since the previous block came out); how long a block takes until
        its first frames are out (``record_compute``: the catch-up and buffered-lead estimates) is its whole
        trip up to its first part."""
        block = job.block
        frames = _check_frames(frames, block.num_frames - offset)
        previous, self._last_delivered_at = self._last_delivered_at, finished
        if cost is None:
            cost = finished - max(started, previous if previous is not None else started)
        chunk = self._chunk(job, frames, offset, BlockTimings(job.audio_ready_at, started, finished, cost))
        with self._cond:
            # the schedule plans (lateness, catch-up, buffered lead) with the time until the block's first
            # frames are out: for a block made in parts, its first part
            self._schedule.record_compute(finished - started, (job.first_out_at or finished) - started)
            self._budget.note(cost)
            if job.epoch != self._epoch:
                return  # interrupted meanwhile: interrupt() already rewound next_frame
            self._out.append(chunk)
            if not pipelined:
                self._in_progress = None
                self._next_frame = block.first_frame + block.num_frames
            self._counters.note_block(block.num_frames, speech=bool(block.speech.any()))
            self._schedule.note_ready(chunk.first_frame, finished)
            self._trim_timeline()
            self._cond.notify_all()
        self._signal_consumer()

    def _deliver_part(self, job: _Job, frames: np.ndarray, offset: int, started: float, finished: float) -> None:
        """Queue the frames [offset, offset + n) of a block still being made; the first part of the session's
        first block anchors the playout."""
        chunk = self._chunk(job, frames, offset, BlockTimings(job.audio_ready_at, started, finished,
                                                             finished - started), ends_block=False)
        if offset == 0:
            job.first_out_at = finished
        with self._cond:
            if job.epoch != self._epoch:
                return  # interrupted meanwhile: the rest of the block is made and dropped too
            self._out.append(chunk)
            self._schedule.note_ready(chunk.first_frame, finished)
            self._cond.notify_all()
        self._signal_consumer()

    def _chunk(self, job: _Job, frames: np.ndarray, offset: int, timings: BlockTimings, *,
               ends_block: bool = True) -> Chunk:
        """The chunk of the block's frames [offset, offset + len(frames)) with their audio, speech flags and onsets."""
        block, S, n = job.block, self.samples_per_frame, frames.shape[0]
        whole = offset == 0 and n == block.num_frames
        onsets = [(o - offset, t) for o, t in job.onsets if offset <= o < offset + n]
        full_band = job.full_band
        if full_band is not None and not whole:
            full_band = full_band[offset * S * self._fb_ratio : (offset + n) * S * self._fb_ratio]
        return Chunk(
            frames=frames,
            audio=block.frame_samples(S)[offset * S : (offset + n) * S].copy(),
            first_frame=block.first_frame + offset,
            speech=block.speech[offset : offset + n].copy(),
            timings=timings,
            speech_onset_arrivals=[t for _, t in onsets],
            speech_onset_offsets=[o for o, _ in onsets],
            full_band_audio=full_band,
            full_band_rate=None if job.full_band is None else self.sample_rate * self._fb_ratio,
            ends_block=ends_block,
        )

    # ------------------------------------------------------------------ worker helpers (lock held)
    def _skip_to(self, frame: int) -> None:
        self._counters.skipped += frame - self._next_frame
        logger.debug("behind real time: skipping frames %d..%d", self._next_frame, frame - 1)
        self._next_frame = frame
        self._trim_timeline()

    def _trim_timeline(self) -> None:
        # Keep what an interrupt may regenerate (everything after the last frame shown, delivered
        # or not) plus the next block's context, but never more than the backlog bound.
        S = self.samples_per_frame
        oldest = min(self._played_frame + 1, self._next_frame)
        keep_from = max(oldest * S, self._next_frame * S - int(self.config.max_live_backlog_s * self.sample_rate))
        self._timeline.trim_before(keep_from - self._context)
        if self._full_band is not None:
            self._full_band.trim_before((keep_from - self._context) * self._fb_ratio)
        self._speech.forget_before(keep_from // S)

    def _late_and_silent(self, f: int, need: int, now: float, input_late: float | None) -> bool:
        """Live: block ``f`` would reach its slot, or is behind the input (``input_late``, from
        _input_lateness_s), by over ``silence_skip_late_s``, its audio (lookahead included) is all there
        and none of it is speech."""
        after = self.config.silence_skip_late_s
        if after is None or input_late is None:  # None: its audio is not all there
            return False
        late = self._schedule.lateness(f, now)
        if late is None or max(late, input_late) <= after:
            return False
        return self._speech.silent(f, need // self.samples_per_frame)

    def _input_lateness_s(self, need: int, now: float) -> float | None:
        """Live: the schedule's input lateness of a block needing samples up to ``need``; None while
        its audio is not all there (waiting for it is not being late)."""
        if self._timeline.write_cursor < need:
            return None
        return self._schedule.input_lateness(self._timeline.arrival_time(need - 1), now)

    def _analyze_vad(self, upto_sample: int) -> None:
        self._counters.onsets += self._speech.analyze(upto_sample)

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


def _blocks_in_flight(generator: BlockGenerator, configured: int | None) -> int:
    """How many blocks the session keeps in the generator at once (1 unless it pipelines)."""
    pipelines = callable(getattr(generator, "submit", None)) and callable(getattr(generator, "collect", None))
    if configured is None:
        return max(1, int(getattr(generator, "pipeline_depth", 1))) if pipelines else 1
    if configured > 1 and not pipelines:
        raise ValueError("max_blocks_in_flight > 1 needs a generator with submit() and collect()")
    return configured


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


def _check_frames(frames: np.ndarray, num_frames: int | None) -> np.ndarray:
    """uint8 [N, H, W, 3] frames, ``num_frames`` of them unless None."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        desc = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
        raise TypeError(f"generate() must return uint8 [N, H, W, 3] frames, got {desc}")
    if num_frames is not None and frames.shape[0] != num_frames:
        raise ValueError(f"generate() returned {frames.shape[0]} frames for a block of {num_frames}")
    return frames
