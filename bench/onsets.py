"""``avatar bench onsets``: the lite motion at speech onsets — how many frames until the mouth is
open, whether noise makes it flicker, and contact sheets to look at.

The bench sentences (espeak-ng, peak -6 dBFS) are placed after 1.2 s pauses at random sub-frame
offsets, over room noise at about -50 dBFS, and driven through the lite generator offline (the same
windows as the live runtime). For each onset (the first 10 ms above -40 dBFS, the e2e bench's
rule) it reports the frames from the onset's frame until the mouth opening reaches 0.2 (visibly
open) and the opening frame by frame; in the noise-only lead-in, the largest opening (flicker).

Writes bench/results/onsets.json and bench/results/lite_onsets_sheet.png: one row per onset, from
two frames before it to nine after (mouth crops, opening printed on each), then one row of a
closing (the frames after an utterance ends).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
RATE, S, FPS = 16000, 640, 25
VISIBLE = 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onsets", type=int, default=8, help="utterances (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=RESULTS / "onsets.json")
    p.add_argument("--sheet", type=Path, default=RESULTS / "lite_onsets_sheet.png")


def onset_audio(count: int, seed: int) -> tuple[np.ndarray, list[int], list[int]]:
    """(audio, onset sample per utterance, end sample per utterance)."""
    from bench.e2e import SENTENCES
    from tests.support.speech import espeak_speech, trim_silence

    rng = np.random.default_rng(seed)
    parts, onsets, ends, length = [np.zeros(int(1.5 * RATE), np.float32)], [], [], int(1.5 * RATE)
    for i in range(count):
        u = trim_silence(espeak_speech(SENTENCES[i % len(SENTENCES)], RATE, words_per_minute=160), RATE)
        u = (u * 0.5 / np.abs(u).max()).astype(np.float32)
        pad = np.zeros(int(rng.integers(0, S)), np.float32)
        level = np.sqrt(np.convolve(u * u, np.ones(160) / 160, "valid"))
        first_loud = int(np.argmax(level > 10 ** (-40 / 20)))
        onsets.append(length + pad.size + first_loud)
        ends.append(length + pad.size + u.size)
        parts += [pad, u, np.zeros(int(1.2 * RATE), np.float32)]
        length += pad.size + u.size + int(1.2 * RATE)
    audio = np.concatenate(parts)
    audio += (0.003 * rng.standard_normal(audio.size)).astype(np.float32)  # room noise, about -50 dBFS
    return audio, onsets, ends


def run(args: argparse.Namespace) -> int:
    import cv2

    from live_avatar.core.engines.lite import LiteEngine
    from live_avatar.core.engines.lite.drive import audio_blocks
    from live_avatar.core.portraits import default_portrait

    audio, onsets, ends = onset_audio(args.onsets, args.seed)
    engine = LiteEngine()
    generator = engine.new_generator(engine.prepare_avatar(default_portrait()), seed=3)
    frames, opening = [], []
    for block in audio_blocks(audio, generator, samples_per_frame=S):
        frames.extend(generator.generate(block))
        opening.extend(p.mouth_open for p in generator.last_poses)
    opening = np.asarray(opening)
    per_onset = []
    for on in onsets:
        k = on // S
        seq = opening[k : k + 8]
        hit = np.flatnonzero(seq >= VISIBLE)
        per_onset.append({"onset_frame": int(k), "offset_in_frame_ms": (on - k * S) / RATE * 1000,
                          "frames_to_open": int(hit[0]) if hit.size else None,
                          "opening": [round(float(x), 3) for x in opening[k - 2 : k + 8]]})
    lead_noise = opening[: int(1.4 * FPS)]
    closing = []
    for end in ends:
        k = -(-end // S)
        closing.append([round(float(x), 3) for x in opening[k - 1 : k + 6]])
    frames_to_open = [o["frames_to_open"] for o in per_onset if o["frames_to_open"] is not None]
    steps = np.abs(np.diff(opening))
    result = {
        "benchmark": "onsets",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {"onsets": args.onsets, "seed": args.seed, "visible_opening": VISIBLE,
                   "motion": {k: getattr(engine.config.motion, k) for k in
                              ("lookahead_ms", "attack_ms", "release_ms", "peak_weight_db", "level_range_db",
                               "open_exponent", "open_gain")},
                   "block_frames": engine.block_frames},
        "frames_to_open_p50": float(np.median(frames_to_open)) if frames_to_open else None,
        "frames_to_open_max": max(frames_to_open) if frames_to_open else None,
        "onsets_never_open": sum(o["frames_to_open"] is None for o in per_onset),
        "noise_only_max_opening": float(lead_noise.max()),
        "largest_frame_to_frame_step": float(steps.max()),
        "per_onset": per_onset,
        "closing_after_utterances": closing,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    rig = generator.avatar.rig
    mouth = rig.landmarks[[61, 291, 0, 17]]
    cx, cy = mouth[:, 0].mean(), mouth[:, 1].mean()
    half = int(rig.face_height * 0.32)
    tile = 160

    def crop(k: int, text: str) -> np.ndarray:
        f = frames[min(max(k, 0), len(frames) - 1)]
        y0, x0 = max(0, int(cy) - half), max(0, int(cx) - half)
        img = cv2.resize(f[y0 : y0 + 2 * half, x0 : x0 + 2 * half], (tile, tile), interpolation=cv2.INTER_AREA)
        img = np.ascontiguousarray(img)
        cv2.putText(img, text, (3, tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, (3, tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1, cv2.LINE_AA)
        return img

    rows = []
    for o in per_onset[:6]:
        k = o["onset_frame"]
        rows.append(np.hstack([crop(j, f"{j - k:+d} o={opening[j]:.2f}") for j in range(k - 2, k + 10)]))
    k = -(-ends[0] // S)
    rows.append(np.hstack([crop(j, f"end{j - k:+d} o={opening[j]:.2f}") for j in range(k - 4, k + 8)]))
    sheet = np.vstack(rows)
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.output} and {args.sheet}")
    print(f"  frames to a visibly open mouth (>= {VISIBLE}) after the onset's frame: p50 "
          f"{result['frames_to_open_p50']}, max {result['frames_to_open_max']}, never {result['onsets_never_open']}; "
          f"noise-only max opening {result['noise_only_max_opening']:.3f}")
    return 0
