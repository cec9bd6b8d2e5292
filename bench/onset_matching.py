"""Speech onsets in a 10 ms level envelope, and which onset of the returned audio answers which sent one.

The e2e bench's peer sends speech and gets it back delayed into sync with the lips. Its speech-to-lips
figures pair each sent onset with the returned onset of the same utterance. Pairing by time alone
("the first returned onset within 2 s") was what the bench did until 2026-12-04: on the diffusion
engine, whose latency was ~2 s, more than half the onsets fell outside the window and went unmatched,
so its percentiles described only the faster half (the 10-minute run of 2026-12-04: 72 of 164 matched,
p95 2.00 s against a server p95 of 2.3 s). Here a returned onset answers a sent one if it comes within
a wide window and its level contour over the next 1.5 s follows the sent one's (the same utterance, not
the next one); each returned onset answers at most one sent one. On the bench's 8 espeak sentences
through an opus round trip, a sentence's contour against its own returned copy scored 0.96-0.98 and
against another sentence's at most 0.42 (1.5 s contours, the best of +-50 ms of lag: the onset of a
soft consonant can be found a few hops apart after the codec; 0.5 s contours scored up to 0.86 across
sentences).
"""

from __future__ import annotations

import numpy as np


def envelope_db(samples: np.ndarray, rate: int, hop_s: float) -> np.ndarray:
    """RMS level in dBFS per hop."""
    hop = int(round(rate * hop_s))
    n = samples.size // hop
    if n == 0:
        return np.zeros(0, np.float32)
    rms = np.sqrt(np.mean(samples[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-12)
    return (20 * np.log10(rms)).astype(np.float32)


def detect_onsets(env_db: np.ndarray, hop_s: float, threshold_db: float, min_silence_s: float) -> np.ndarray:
    """Hop indices where the level rises above the threshold after >= min_silence_s below it."""
    loud = env_db > threshold_db
    need = int(round(min_silence_s / hop_s))
    onsets = []
    quiet_run = need  # the start of the recording counts as silence
    for i, is_loud in enumerate(loud):
        if is_loud:
            if quiet_run >= need:
                onsets.append(i)
            quiet_run = 0
        else:
            quiet_run += 1
    return np.asarray(onsets, dtype=np.int64)


def contour_similarity(a: np.ndarray, b: np.ndarray, floor_db: float) -> float:
    """Pearson correlation of two level contours (dB) clipped at ``floor_db``; -1 when either is flat
    or they differ in length (the run ended inside one)."""
    if a.size != b.size or a.size < 2:
        return -1.0
    x, y = np.maximum(a, floor_db).astype(np.float64), np.maximum(b, floor_db).astype(np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = float(np.sqrt(np.sum(x * x) * np.sum(y * y)))
    return float(np.sum(x * y) / denom) if denom > 0 else -1.0


def match_onsets(
    env_sent: np.ndarray,
    sent_on: np.ndarray,
    sent_times: np.ndarray,
    env_ret: np.ndarray,
    ret_on: np.ndarray,
    ret_times: np.ndarray,
    *,
    window_s: float,
    contour_hops: int,
    max_lag_hops: int,
    min_similarity: float,
    floor_db: float,
) -> list[int | None]:
    """For each sent onset (hop index into ``env_sent``, sent at ``sent_times[i]``), the index into
    ``ret_on`` of the returned onset that answers it, or None.

    Candidates arrive after the sent onset and within ``window_s``; of those whose contour (the
    ``contour_hops`` hops from the onset, the best of +-``max_lag_hops``) has a similarity of at least
    ``min_similarity`` to the sent one, the most similar wins, the earliest among near ties (the same
    sentence twice). A returned onset already taken, or earlier than one taken, is not a candidate:
    answers keep the senders' order.
    """
    answers: list[int | None] = []
    next_free = 0  # returned onsets before this one are taken or passed
    for i in sent_on:
        t_sent = sent_times[i]
        sent_contour = env_sent[i : i + contour_hops]
        best, best_sim = None, min_similarity
        for k in range(next_free, ret_on.size):
            t_ret = ret_times[ret_on[k]]
            if t_ret <= t_sent:
                continue
            if t_ret >= t_sent + window_s:
                break
            sim = max(
                contour_similarity(sent_contour, env_ret[h : h + contour_hops], floor_db)
                for h in range(max(0, ret_on[k] - max_lag_hops), ret_on[k] + max_lag_hops + 1)
            )
            if sim > best_sim + 0.02 or (best is None and sim >= best_sim):
                best, best_sim = k, sim
        answers.append(best)
        if best is not None:
            next_free = best + 1
    return answers
