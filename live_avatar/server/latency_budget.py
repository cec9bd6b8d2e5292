"""``LatencyBudget``: where a session's speech-to-lips time goes, stage by stage.

For every speech onset, the frame generated from it is followed through the server:

    received    the packet in which speech starts arrives (after aiortc's jitter buffer and decode)
    timeline    it is resampled and on the session's timeline (push_audio)
    block_ready the rest of the frame's audio (and its lookahead) has arrived: the block can start
    generated   the engine's worker has made the frame (queue wait + compute)
    playout     the frame's playout slot comes (the margin that absorbs generation jitter, and in a block
                of several frames the frames before the onset's own)
    sent        the first consumer's video track hands the frame to its encoder

Each stage's duration is kept per onset; the stats give p50/p95 per stage and of the total (the
server's own speech-to-lips; the viewer adds encode, network, jitter buffer and decode).
"""

from __future__ import annotations

from collections import OrderedDict, deque

import numpy as np

from live_avatar.core.contract import BlockTimings

STAGES = ("timeline", "block_ready", "generated", "playout", "sent")
KEEP = 256  # onsets whose budget is kept
PENDING = 64  # onsets waiting for their send


class LatencyBudget:
    def __init__(self) -> None:
        self._pending: OrderedDict[int, list[dict[str, float]]] = OrderedDict()
        self.done: deque[dict[str, float]] = deque(maxlen=KEEP)

    def slot_published(self, slot: int, arrivals: list[float], timings: BlockTimings | None,
                       pushed_at: dict[float, float] | None, added_at: float | None, slot_at: float,
                       wait_for_send: bool) -> None:
        """The frame of ``slot`` carries onsets that arrived at ``arrivals``."""
        for arrival in arrivals:
            marks = {"received": arrival}
            marks["timeline"] = (pushed_at or {}).get(arrival, arrival)
            if timings is not None:
                marks["block_ready"] = max(timings.audio_ready_at, marks["timeline"])
                marks["generated"] = timings.finished_at
            if added_at is not None:
                marks["handed_to_playout"] = added_at
            marks["playout"] = slot_at
            if wait_for_send:
                self._pending.setdefault(slot, []).append(marks)
                while len(self._pending) > PENDING:
                    self._pending.popitem(last=False)
            else:
                marks["sent"] = slot_at
                self._finish(marks)

    def slot_sent(self, slot: int, t: float) -> None:
        for marks in self._pending.pop(slot, []):
            marks["sent"] = t
            self._finish(marks)

    def _finish(self, marks: dict[str, float]) -> None:
        present = [(stage, marks[stage]) for stage in STAGES if stage in marks]
        stages = stage_durations(marks["received"], present)
        stages["total"] = (present[-1][1] if present else marks["received"]) - marks["received"]  # to "sent" if known
        self.done.append(stages)

    def summary(self) -> dict[str, object]:
        """p50/p95 (ms) of each stage over the kept onsets."""
        out: dict[str, object] = {"onsets": len(self.done), "stages": list(STAGES)}
        for stage in (*STAGES, "total"):
            values = np.asarray([d[stage] for d in self.done if stage in d], np.float64) * 1000.0
            out[stage] = (
                {"p50": float(np.median(values)), "p95": float(np.percentile(values, 95))} if values.size else None
            )
        return out


def first_frame_stages(first_audio_at: float, timings: BlockTimings | None, added_at: float | None,
                       slot_at: float) -> dict[str, float]:
    """Where the first frame's time went (ms), from the session's first audio packet:

    block_ready  the first block's audio (and lookahead) arrived
    queued       the worker started it (a prefill or an earlier block still running)
    compute      the engine made its frames
    handoff      the chunk reached the playout
    playout      its first slot came
    """
    marks: list[tuple[str, float]] = []
    if timings is not None:
        marks += [("block_ready", timings.audio_ready_at), ("queued", timings.started_at),
                  ("compute", timings.finished_at)]
    if added_at is not None:
        marks.append(("handoff", added_at))
    marks.append(("playout", slot_at))
    out = {stage: seconds * 1000.0 for stage, seconds in stage_durations(first_audio_at, marks).items()}
    out["total"] = (slot_at - first_audio_at) * 1000.0
    return out


def stage_durations(start: float, marks: list[tuple[str, float]]) -> dict[str, float]:
    """Seconds from each mark to the next, from ``start``; a mark earlier than the latest so far counts 0."""
    out: dict[str, float] = {}
    previous = start
    for stage, at in marks:
        out[stage] = max(0.0, at - previous)
        previous = max(previous, at)
    return out
