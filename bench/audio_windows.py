"""``avatar bench audio-windows``: how far the live rolling wav2vec windows are from whole-file features.

The liveavatar engine's live path (``Wav2VecFeatures.block``) runs wav2vec2 on a window of
[2 s left context | the 12-frame block | 0.08 s lookahead] normalised by its own statistics; the
reference runs it once over the whole file, normalised by the file's statistics (issue 8, point 7).
This runs both over espeak-ng speech with pauses (the e2e benchmark's sentences) and reports, per
hidden layer, the cosine similarity per video frame between the live features and the whole-file
ones, over all frames, speech frames and pause frames:

* ``vs_nominal``: whole file, the same 25-fps frame positions as the live path (only the windowing
  and per-window normalisation differ);
* ``vs_reference``: whole file with the reference's align-corners 30-fps resampling.

Encoders: the tiny random one of the tests, and the wav2vec2-large-xlsr-53 architecture with seeded
random weights (``--encoder large``, ~1.3 GB, CPU ok). Random weights are not the trained model: the
figures show what the windowing changes in a deep wav2vec stack, not the trained model's numbers.
Results: bench/results/audio_windows.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", choices=["tiny", "large", "both"], default="both")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the speech program (default 30)")
    p.add_argument("--lookahead", type=float, nargs="+", default=None, metavar="S",
                   help="live-window lookaheads to compare, seconds (default: the engine's, 0.08)")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "audio_windows.json")


def speech_program(seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz speech with pauses (the e2e benchmark's program) and a per-video-frame speech flag."""
    from bench.e2e import E2EConfig, build_speech_program

    program = build_speech_program(E2EConfig(duration_s=seconds), Path(tempfile.gettempdir()))
    samples = program.samples.astype(np.float32)
    spf = 640
    frames = samples.size // spf
    rms = np.sqrt(np.mean(samples[: frames * spf].reshape(frames, spf) ** 2, axis=1))
    return samples, 20 * np.log10(rms + 1e-9) > -40.0


def live_features(features, samples: np.ndarray, block: int = 12) -> "torch.Tensor":  # noqa: F821
    """Block by block, as a live session calls it: zeros before the start, the lookahead after each block."""
    import torch

    spf = features.samples_per_frame
    context, lookahead = features.context_samples, features.lookahead_samples
    padded = np.concatenate([np.zeros(context, np.float32), samples, np.zeros(lookahead + block * spf, np.float32)])
    blocks = (samples.size // spf) // block
    out = []
    for b in range(blocks):
        start = b * block * spf  # in padded coordinates: the window's first sample
        window = padded[start : start + context + block * spf + lookahead]
        out.append(features.block(window, b * block, block, context, lookahead))
    return torch.cat(out, dim=2)  # [L, D, frames]


def cosine_per_frame(a, b) -> np.ndarray:
    """[L, D, n] x [L, D, n] -> [L, n] cosine similarity of each layer's frame vectors."""
    import torch

    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=1).cpu().numpy()


def summarize(cos: np.ndarray, speech: np.ndarray, block: int = 12) -> dict:
    positions = np.arange(cos.shape[1]) % block
    def stats(values: np.ndarray) -> dict:
        return {"mean": float(values.mean()), "p5": float(np.percentile(values, 5)), "min": float(values.min())}

    return {
        "all_layers": {"all": stats(cos), "speech": stats(cos[:, speech]), "pause": stats(cos[:, ~speech])},
        "per_layer_mean": [round(float(v), 4) for v in cos.mean(axis=1)],
        "last_layer": stats(cos[-1]),
        # the lookahead matters most to a block's last frames: speech frames' mean by position in the block
        "speech_by_block_position": [round(float(cos[:, (positions == k) & speech].mean()), 4) for k in range(block)],
    }


def measure(encoder: str, samples: np.ndarray, speech: np.ndarray, lookahead_s: float | None = None) -> dict:
    import torch

    from live_avatar.core.engines.liveavatar.audio_features import (
        AudioFeatureConfig,
        Wav2VecFeatures,
    )
    from live_avatar.core.engines.liveavatar.parts import random_wav2vec2_large

    config = AudioFeatureConfig() if lookahead_s is None else AudioFeatureConfig(lookahead_s=lookahead_s)
    torch.manual_seed(0)
    if encoder == "tiny":
        from live_avatar.core.engines.liveavatar.tiny_weights import write_tiny_wav2vec

        with tempfile.TemporaryDirectory() as tmp:
            features = Wav2VecFeatures.from_folder(write_tiny_wav2vec(Path(tmp) / "w2v", seed=0), device="cpu",
                                                   config=config)
    else:
        features = Wav2VecFeatures(random_wav2vec2_large(torch.device("cpu"), torch.float32, seed=0), config=config)
    t0 = time.perf_counter()
    live = live_features(features, samples)
    n = live.shape[2]
    nominal = features.offline(samples, n, interpolation="nominal")
    reference = features.offline(samples, n)
    speech = speech[:n]
    return {
        "frames": n,
        "speech_frames": int(speech.sum()),
        "window": {"context_samples": features.context_samples, "lookahead_samples": features.lookahead_samples},
        "vs_nominal": summarize(cosine_per_frame(live, nominal), speech),
        "vs_reference": summarize(cosine_per_frame(live, reference), speech),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def run(args: argparse.Namespace) -> int:
    samples, speech = speech_program(args.seconds)
    encoders = ["tiny", "large"] if args.encoder == "both" else [args.encoder]
    lookaheads = args.lookahead or [None]
    results = {}
    for encoder in encoders:
        for lookahead in lookaheads:
            # one entry per encoder; with --lookahead, one per encoder and lookahead ("tiny@0.08")
            key = encoder if args.lookahead is None else f"{encoder}@{lookahead:g}"
            print(f"{key} encoder: {samples.size / 16000:.0f} s of speech ...", flush=True)
            results[key] = r = measure(encoder, samples, speech, lookahead)
            print(f"  cosine live vs whole file (same frame positions): mean {r['vs_nominal']['all_layers']['all']['mean']:.4f}, "
                  f"p5 {r['vs_nominal']['all_layers']['all']['p5']:.4f}; speech {r['vs_nominal']['all_layers']['speech']['mean']:.4f}, "
                  f"pauses {r['vs_nominal']['all_layers']['pause']['mean']:.4f}; vs the reference's resampling "
                  f"{r['vs_reference']['all_layers']['all']['mean']:.4f}", flush=True)
    out = {
        "benchmark": "audio_windows",
        "command": "avatar bench audio-windows " + " ".join(sys.argv[3:]) if sys.argv[1:2] == ["bench"] else "avatar bench audio-windows",
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "speech_s": samples.size / 16000,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0
