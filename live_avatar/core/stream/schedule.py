"""``BlockSchedule``: when each block of a ``StreamSession`` is due, and when to give up waiting.

Pure computations on the session's timing state (DESIGN.md §2); the session calls them with its
lock held and acts on the answers (wait, pad silence, skip). Block f has first frame f, B frames,
S samples a frame and lookahead L:
  * due for playout at first_ready + playout_margin_s + (f - f_first)/fps (the consumer starts
    its clock when the first chunk arrives);
  * ready when the timeline holds samples up to (f+B)*S + L; if the input is late, a live block
    waits until t0 + ((f+B)*S + L)/sr + input_jitter_s (never past half a block after its
    playout), then pads silence;
  * buffered: generated at most max(buffered_lead_s, one block, its expected compute) before its playout;
  * a worker more than a block behind the playout skips whole blocks ahead; live, a block that
    would be over ``silence_skip_late_s`` late is skipped if it is silence;
  * live, "behind" is also measured against the input: audio that arrived past a block's needs
    before the worker could start it. The consumer reports the slot each frame was shown in
    (``note_shown``), and its playout slips a late frame to the next slot, so against the slots a
    worker slower than real time never looks more than a slot late; against the input it does.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from live_avatar.core.stream.config import StreamConfig
from live_avatar.core.stream.input_clock import LiveInputClock


class BlockSchedule:
    def __init__(
        self,
        config: StreamConfig,
        clock: LiveInputClock,
        *,
        fps: int,
        sample_rate: int,
        block_frames: int,
        lookahead: int,
    ):
        self.config = config
        self.clock = clock  # owns t0 (the live input's anchor); shared with push_audio's late-drop rule
        self.fps = fps
        self.sample_rate = sample_rate
        self.samples_per_frame = sample_rate // fps
        self.block_frames = block_frames
        self.lookahead = lookahead
        self.first_ready: float | None = None  # when the first chunk was ready: the playout's origin
        self.first_ready_frame = 0
        self.last_slack_s: float | None = None  # playout due - ready time of the last block
        self.compute_s: deque[float] = deque(maxlen=config.stats_window)  # start to last frame (the stats)
        # start to first frames out: what the plans use (a block made in parts sends its first part early)
        self.first_out_s: deque[float] = deque(maxlen=config.stats_window)

    def window_end(self, f: int) -> int:
        """The sample after block ``f``'s last one plus its lookahead: what it needs to be ready."""
        return (f + self.block_frames) * self.samples_per_frame + self.lookahead

    def playout_due(self, f: int) -> float:
        """When frame ``f`` is due on screen: the first chunk's ready time + margin + frames/fps."""
        return self.first_ready + self.config.playout_margin_s + (f - self.first_ready_frame) / self.fps

    def note_shown(self, f: int, due: float) -> None:
        """The consumer showed frame ``f`` in a slot due at ``due``: later frames are due from there.

        Its slot grid moves (the margin control), a frame late for its slot is shown in the next one
        (the playout slips), trims and drops win slots back: the slot a frame was shown in carries them
        all. A schedule that heard only of the grid's moves drifted from the real slots by every slip
        the grid then took back (the grid 232 ms earlier after 6 slips in 10 minutes at 256x384 on an
        H100) and skipped silent blocks that were on time.
        """
        if self.first_ready is None:
            return
        self.first_ready = due - self.config.playout_margin_s
        self.first_ready_frame = f

    def expected_compute(self) -> float:
        """How long a block takes from its start until its first frames are out (median)."""
        return float(np.median(self.first_out_s)) if self.first_out_s else 0.0

    def record_compute(self, seconds: float, first_out_s: float | None = None) -> None:
        """A block took ``seconds`` to make, its first frames out after ``first_out_s`` (default: all of it)."""
        self.compute_s.append(seconds)
        self.first_out_s.append(seconds if first_out_s is None else first_out_s)

    def note_ready(self, f: int, finished: float) -> None:
        """Block ``f`` was delivered at ``finished``; the first one anchors the playout."""
        if self.first_ready is None:
            self.first_ready, self.first_ready_frame = finished, f
        self.last_slack_s = self.playout_due(f) - finished

    def catch_up_target(self, f: int, now: float, input_lateness_s: float | None = None) -> int | None:
        """Behind the playout by more than a block: the frame to skip to (whole blocks, past the
        expected compute of the next one); None when on time. ``input_lateness_s``: the block's
        ``input_lateness`` (live, its audio all there), if that says more."""
        if self.first_ready is None:
            return None
        B = self.block_frames
        late = now - self.playout_due(f)
        if input_lateness_s is not None:
            late = max(late, input_lateness_s - self.expected_compute())
        if late <= B / self.fps:
            return None
        blocks = max(1, math.ceil((late + self.expected_compute()) * self.fps / B))
        return f + blocks * B

    def lateness(self, f: int, now: float) -> float | None:
        """How late block ``f`` would reach its playout slot if started now (its expected compute);
        None before the playout has started."""
        if self.first_ready is None:
            return None
        return now + self.expected_compute() - self.playout_due(f)

    def input_lateness(self, ready_at: float, now: float) -> float:
        """How late a block whose audio was all there at ``ready_at`` would reach its slot if started
        now, with the slots planned just in time for the input (such a block is due the playout margin
        after its compute): ``lateness`` measured against the input instead of the slots."""
        return now - ready_at - self.config.playout_margin_s

    def buffered_start_at(self, f: int) -> float | None:
        """Buffered: the earliest time block ``f`` may start (a bounded lead on its playout, never less
        than a block takes from start to frames: a pipelined generator's blocks take longer than one)."""
        if not self.config.buffered or self.first_ready is None:
            return None
        lead = max(self.config.buffered_lead_s, self.block_frames / self.fps, self.expected_compute())
        return self.playout_due(f) - lead

    def input_deadline(self, f: int, need: int) -> float:
        """Until when block ``f`` waits for missing input before padding silence.

        Live: the nominal arrival of its last sample + input_jitter_s (padding drops real speech
        from the outgoing audio too, so wait the full allowance), but never so long that the
        catch-up rule would fire: at most half a block past its playout. Buffered: the producer
        is ahead of real time by design, so only the playout paces blocks without audio; they are
        made just in time (due - expected compute - a small guard).
        """
        cfg = self.config
        t_input = self.clock.due(need) + cfg.input_jitter_s
        if self.first_ready is None:
            return t_input
        due = self.playout_due(f)
        if cfg.buffered:
            guard = min(cfg.playout_margin_s / 2, self.block_frames / self.fps)
            return due - self.expected_compute() - guard
        return min(t_input, due + self.block_frames / (2 * self.fps))

    def live_backlog_target(self, next_frame: int, write_cursor: int) -> int | None:
        """Live: when arrived audio piles up (stalled consumer, fast sender clock), the newest
        complete block to jump to so memory and latency stay bounded; None within the bound."""
        S, B = self.samples_per_frame, self.block_frames
        backlog = write_cursor - next_frame * S
        if backlog <= self.config.max_live_backlog_s * self.sample_rate:
            return None
        newest = (write_cursor - self.lookahead) // S - B
        return max(next_frame + B, newest - newest % B)
