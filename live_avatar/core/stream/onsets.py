"""``SpeechTracker``: a ``StreamSession``'s per-frame speech flags, speech onsets and end of speech.

The VAD runs over the timeline frame by frame, ahead of generation. Each onset keeps the arrival
time of the packet where speech starts and its frame; it is handed out with the block that shows
that frame, which is what speech_to_lips_latency (DESIGN.md §2) is measured to. All methods run
under the session's lock.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from live_avatar.core.audio.timeline import AudioTimeline
from live_avatar.core.audio.vad import VadConfig, VoiceActivityDetector


class SpeechTracker:
    def __init__(self, timeline: AudioTimeline, samples_per_frame: int, vad: VadConfig, *, buffered: bool):
        self._timeline = timeline
        self._S = samples_per_frame
        self._buffered = buffered
        self._vad = VoiceActivityDetector(timeline.sample_rate, samples_per_frame, vad)
        self._vad_next_frame = 0
        self._speech_flags: dict[int, bool] = {}
        # Speech onsets (frame, arrival) waiting for the block that shows them, and those already
        # handed out with a block that may still be dropped by an interrupt (live mode re-issues them).
        self._pending_onsets: deque[tuple[int, float]] = deque(maxlen=64)
        self._issued_onsets: deque[tuple[int, float]] = deque(maxlen=64)
        self._eos_sample: int | None = None

    def analyze(self, upto_sample: int) -> int:
        """Run the VAD over complete frames not yet analysed, up to ``upto_sample``; returns the
        number of new onsets."""
        S, timeline = self._S, self._timeline
        limit = min(timeline.write_cursor, upto_sample) // S
        k = max(self._vad_next_frame, -(-timeline.start_index // S))
        onsets = 0
        while k < limit:
            result = self._vad.process(timeline.read(k * S, (k + 1) * S))
            self._speech_flags[k] = result.speech
            if result.onset:
                onsets += 1
                first_loud = max(k * S + result.onset_offset, timeline.start_index)
                self._pending_onsets.append((k, timeline.arrival_time(first_loud)))
            k += 1
        self._vad_next_frame = max(self._vad_next_frame, k)
        return onsets

    def speech(self, first_frame: int, num_frames: int) -> np.ndarray:
        """Per-frame speech flags of frames [first_frame, first_frame + num_frames)."""
        flags = self._speech_flags
        return np.array([flags.get(k, False) for k in range(first_frame, first_frame + num_frames)], bool)

    def silent(self, first_frame: int, end_frame: int) -> bool:
        """Frames [first_frame, end_frame) are all analysed, none is speech and no onset waits in them."""
        if end_frame > self._vad_next_frame:
            return False
        if any(first_frame <= frame < end_frame for frame, _ in self._pending_onsets):
            return False
        return not any(self._speech_flags.get(k, False) for k in range(first_frame, end_frame))

    def issue_onsets(self, first_frame: int, end_frame: int) -> list[tuple[int, float]]:
        """The onsets before ``end_frame``, handed out with the block [first_frame, end_frame): each as
        (its frame's offset in the block, arrival time); an onset in a block that was skipped is shown by
        this block's first frame."""
        issued = [o for o in self._pending_onsets if o[0] < end_frame]
        self._issued_onsets.extend(issued)
        self._pending_onsets = deque(
            (o for o in self._pending_onsets if o[0] >= end_frame), maxlen=self._pending_onsets.maxlen
        )
        return [(max(0, frame - first_frame), t) for frame, t in issued]

    def mark_end_of_speech(self, sample: int) -> None:
        self._eos_sample = sample

    def take_end_of_speech(self, need: int) -> bool:
        """Whether end_of_speech() falls inside a block window ending at ``need`` (said once)."""
        end_of_speech = self._eos_sample is not None and self._eos_sample <= need
        if end_of_speech:
            self._eos_sample = None
        return end_of_speech

    def utterance_ended_in(self, f: int) -> bool:
        """Buffered: end_of_speech() was said inside this block's window, so no more audio is
        coming for it; generate now instead of waiting for the real-time deadline."""
        eos = self._eos_sample
        return self._buffered and eos is not None and eos > f * self._S

    def rewind(self, restart: int) -> None:
        """An interrupt: generation resumes at frame ``restart``."""
        if self._buffered:
            # The unplayed speech is gone; what comes next is a new utterance after silence.
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

    def forget_before(self, frame: int) -> None:
        """Drop the speech flags of frames the timeline no longer holds."""
        for k in [k for k in self._speech_flags if k < frame]:
            del self._speech_flags[k]
