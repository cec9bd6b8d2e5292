"""The e2e bench's pairing of sent and returned speech onsets (bench/onset_matching.py): answers slower
than the old 2 s window are found, a lost utterance stays unanswered instead of taking the next one's
onset, the same utterance twice is answered in order, and answers bent by the server's repeated and
dropped frames are still found."""

from __future__ import annotations

import numpy as np
import pytest

om = pytest.importorskip("bench.onset_matching")

RATE, HOP = 16000, 0.01


def utterance(seed: int, seconds: float) -> np.ndarray:
    """Noise under a syllable-rate level contour of its own (what tells utterances apart)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    syllables = rng.uniform(0.05, 1.0, int(seconds * 5) + 2)  # ~5 syllables a second
    contour = np.interp(np.arange(n) / RATE * 5, np.arange(syllables.size), syllables)
    return (0.3 * contour * rng.standard_normal(n)).astype(np.float32)


def program(seeds: list[int], pause_s: float = 1.2) -> tuple[np.ndarray, list[float]]:
    parts, starts, t = [np.zeros(RATE, np.float32)], [], 1.0
    for seed in seeds:
        u = utterance(seed, 2.0 + (seed % 3) * 0.4)
        starts.append(t)
        parts += [u, np.zeros(int(pause_s * RATE), np.float32)]
        t += u.size / RATE + pause_s
    return np.concatenate(parts + [np.zeros(8 * RATE, np.float32)]), starts


def repeats_and_drops(x: np.ndarray, every_s: float, seed: int) -> np.ndarray:
    """What the playout does to the returned speech when frames come late: 40 ms of silence put in (a
    repeated frame) or 40 ms cut out (a dropped one), about every ``every_s``."""
    rng, frame, out, at = np.random.default_rng(seed), RATE // 25, [], 0
    for cut in np.sort(rng.choice(np.arange(frame, x.size - frame), int(x.size / RATE / every_s), replace=False)):
        out.append(x[at:cut])
        if rng.random() < 0.5:
            out.append(np.zeros(frame, np.float32))
            at = cut
        else:
            at = cut + frame
    out.append(x[at:])
    return np.concatenate(out)


def answer(sent: np.ndarray, returned: np.ndarray, delay_s: float) -> tuple[np.ndarray, list[int | None], np.ndarray]:
    """Match as the e2e bench does: the returned track arrives ``delay_s`` after the sent one."""
    env_s, env_r = om.envelope_db(sent, RATE, HOP), om.envelope_db(returned, RATE, HOP)
    t_sent = np.arange(env_s.size) * HOP
    t_ret = delay_s + np.arange(env_r.size) * HOP
    on_s = om.detect_onsets(env_s, HOP, -40.0, 0.5)
    on_r = om.detect_onsets(env_r, HOP, -40.0, 0.5)
    answers = om.match_onsets(env_s, on_s, t_sent, env_r, on_r, t_ret, window_s=5.0, contour_hops=150,
                              max_lag_hops=5, strong=0.8, weak=0.3, max_jump_s=0.75, floor_db=-50.0)
    latencies = np.asarray([t_ret[on_r[k]] - t_sent[i] for i, k in zip(on_s, answers, strict=True) if k is not None])
    return on_s, answers, latencies


def test_answers_slower_than_two_seconds_are_all_found():
    sent, starts = program([1, 2, 3, 4, 5, 6])
    on_s, answers, latencies = answer(sent, sent.copy(), delay_s=2.4)
    assert len(on_s) == len(starts) and all(k is not None for k in answers)
    assert np.allclose(latencies, 2.4, atol=2 * HOP)


def test_a_lost_utterance_stays_unanswered():
    sent, starts = program([1, 2, 3, 4, 5])
    returned = sent.copy()
    lost = slice(int(starts[2] * RATE), int((starts[3] - 0.6) * RATE))  # the third utterance never came back
    returned[lost] = 0.0
    on_s, answers, latencies = answer(sent, returned, delay_s=1.0)
    # the next utterance's onset arrives 1.0 s + ~3.6 s after the lost one's: inside the window, and refused
    assert [k is None for k in answers] == [False, False, True, False, False]
    assert np.allclose(latencies, 1.0, atol=2 * HOP)


def test_the_same_utterance_twice_is_answered_in_order():
    sent, _ = program([7, 7, 8])
    on_s, answers, latencies = answer(sent, sent.copy(), delay_s=1.5)
    assert answers == [0, 1, 2]
    assert np.allclose(latencies, 1.5, atol=2 * HOP)


def test_contours_of_different_lengths_or_flat_do_not_match():
    assert om.contour_similarity(np.zeros(10), np.zeros(10), -50.0) == -1.0
    assert om.contour_similarity(np.arange(10.0), np.arange(9.0), -50.0) == -1.0
    assert om.contour_similarity(np.arange(10.0), np.arange(10.0) * 2, -50.0) == pytest.approx(1.0)


def test_answers_bent_by_repeated_and_dropped_frames_are_found_at_their_latency():
    sent, starts = program([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    returned = repeats_and_drops(sent, every_s=0.4, seed=3)  # ~4 events in each 1.5 s contour
    on_s, answers, latencies = answer(sent, returned, delay_s=2.2)
    assert len(on_s) == len(starts) and all(k is not None for k in answers), answers
    # each insert or cut moves the later speech by 40 ms: the latency drifts, never by an utterance
    assert np.all(np.abs(latencies - 2.2) < 0.5) and np.all(np.abs(np.diff(latencies)) < 0.3)
