"""Speech onsets in a 10 ms level envelope, and which onset of the returned audio answers which sent one.

The e2e bench's peer sends speech and gets it back delayed into sync with the lips. Its speech-to-lips
figures pair each sent onset with the returned onset of the same utterance. Pairing by time alone
("the first returned onset within 2 s") was what the bench did until 2026-12-04: on the diffusion
engine, whose latency was ~2 s, more than half the onsets fell outside the window and went unmatched,
so its percentiles described only the faster half (the 10-minute run of 2026-12-04: 72 of 164 matched,
p95 2.00 s against a server p95 of 2.3 s).

Here the window is wide (5 s) and two things tell the answer from the next utterance's onset:
* its level contour over the next 1.5 s follows the sent one's (Pearson over dB, the best of +-50 ms of
  lag). On the bench's 8 espeak sentences through an opus round trip, a sentence against its own
  returned copy scored 0.96-0.98 and against another sentence at most 0.42; but every frame the
  server repeats (40 ms of silence put in) or drops (40 ms cut out) inside the contour bends it: with
  one such event own copies scored down to 0.60, with two down to 0.16.
* the latency moves little from one answer to the next (the server keeps a fixed delay; a catch-up
  skips a 480 ms block at most), while the next utterance's answer comes a whole utterance and pause
  (>= 2.5 s) later. So after a first answer that is unmistakable (contour >= ``strong``), an answer
  needs only a contour >= ``weak`` and a latency within ``max_jump_s`` of the previous answer's; a
  contour >= ``strong`` may jump further. The bench's speech program repeats no sentence within three
  utterances, so a strong contour is the utterance's own. The onsets before the first strong answer
  are then matched backwards from it, with its latency.
Answers keep the senders' order and each returned onset answers one sent onset at most.
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
    strong: float,
    weak: float,
    max_jump_s: float,
    floor_db: float,
) -> list[int | None]:
    """For each sent onset (hop index into ``env_sent``, sent at ``sent_times[i]``), the index into
    ``ret_on`` of the returned onset that answers it (arriving at ``ret_times[ret_on[k]]``), or None.

    Forward, in order: candidates come after the sent onset, within ``window_s``, after the last answer;
    of those that pass the module's rules the most similar wins, the earliest among near ties. Then
    backward over the sent onsets before the first answer (which had no earlier latency to follow), with
    the latency of the answer after them."""

    def similarity(i: int, k: int) -> float:
        return max(
            contour_similarity(env_sent[i : i + contour_hops], env_ret[h : h + contour_hops], floor_db)
            for h in range(max(0, ret_on[k] - max_lag_hops), ret_on[k] + max_lag_hops + 1)
        )

    def pick(i: int, ks: range, follow: float | None) -> int | None:
        best, best_sim = None, -np.inf
        for k in ks:
            latency = ret_times[ret_on[k]] - sent_times[i]
            if not 0 < latency < window_s:
                continue  # (the contour is only compared inside the window)
            sim = similarity(i, k)
            near = follow is not None and abs(latency - follow) <= max_jump_s
            if (sim >= strong or (near and sim >= weak)) and sim > best_sim + 0.02:
                best, best_sim = k, sim
        return best

    answers: list[int | None] = [None] * len(sent_on)
    next_free, follow = 0, None  # returned onsets before next_free are taken or passed
    for n, i in enumerate(sent_on):
        k = pick(i, range(next_free, ret_on.size), follow)
        if k is not None:
            answers[n], next_free, follow = k, k + 1, ret_times[ret_on[k]] - sent_times[i]
    first = next((n for n, k in enumerate(answers) if k is not None), None)
    if first is not None:
        bound, follow = answers[first], ret_times[ret_on[answers[first]]] - sent_times[sent_on[first]]
        for n in range(first - 1, -1, -1):
            k = pick(sent_on[n], range(bound), follow)
            if k is not None:
                answers[n], bound, follow = k, k, ret_times[ret_on[k]] - sent_times[sent_on[n]]
    return answers
