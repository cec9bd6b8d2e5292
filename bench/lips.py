"""Speech-to-lips as a viewer sees it: from the send of a speech onset to the first video frame
in which the mouth is visibly open (used by ``avatar bench e2e``).

The mouth is found from the received picture alone (``bench.e2e.lip_sync_lag`` picks the
thumbnail pixels whose brightness follows the returned speech; their sign-aligned mean is the
"mouth signal"). Its range is set per run: rest = the median over frames without speech, open =
the 95th percentile over frames with speech. A frame shows the mouth *visibly open* when its signal
is above its own pre-onset baseline by ``VISIBLE_FRACTION`` of that range (about a third of a
typical syllable's opening: a few pixels of lip gap at 512x512).
"""

from __future__ import annotations

import numpy as np

VISIBLE_FRACTION = 0.3
SEARCH_BEFORE = 3  # frames before the slot of the returned onset that may already show it
SEARCH_AFTER = 15


def visible_onsets(mouth: np.ndarray, slots: np.ndarray, wire_times: np.ndarray, speech_slots: np.ndarray,
                   onset_slots: list[int], sent_times: list[float]) -> dict[str, object]:
    """For each onset (``onset_slots``: the slot of the returned audio onset, ``sent_times``: when
    its packet was sent), the wire arrival of the first frame with the mouth visibly open, minus
    the send time. ``mouth``/``slots``/``wire_times``: per received frame; ``speech_slots``: bool
    per frame, its slot carries speech."""
    order = np.argsort(slots)
    mouth, slots, wire_times, speech_slots = mouth[order], slots[order], wire_times[order], speech_slots[order]
    if not speech_slots.any() or speech_slots.all():
        return {"latencies_ms": [], "frames_after_sound": [], "range": None}
    rest = float(np.median(mouth[~speech_slots]))
    opened = float(np.percentile(mouth[speech_slots], 95))
    span = opened - rest
    latencies, frames_after = [], []
    index = {int(s): i for i, s in enumerate(slots)}
    for slot, sent in zip(onset_slots, sent_times, strict=True):
        start = index.get(slot - SEARCH_BEFORE)
        if start is None or start < 10:
            continue
        baseline = float(np.median(mouth[start - 10 : start]))
        for i in range(start, min(start + SEARCH_BEFORE + SEARCH_AFTER, mouth.size)):
            if mouth[i] - baseline >= VISIBLE_FRACTION * span:
                latencies.append((wire_times[i] - sent) * 1000.0)
                frames_after.append(int(slots[i]) - slot)
                break
    return {"latencies_ms": latencies, "frames_after_sound": frames_after,
            "range": {"rest": rest, "open_p95": opened}}
