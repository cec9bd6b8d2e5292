"""``avatar bench NAME``: each benchmark is a module bench/NAME.py of a checkout of the repository,
with add_arguments(p) and run(args). Benchmarks are not installed: they use the test support code
(tests/support) and write their results into the checkout's bench/results/."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import live_avatar

BENCHMARKS = {
    "lite": "lite engine: fps and CPU-seconds per second of video, 1 and 4 sessions",
    "e2e": "end to end over loopback WebRTC: speech-to-lips, first frame, A/V offset, memory",
    "generate": "offline generation: peak RSS and real-time factor vs. length",
    "liveavatar": "liveavatar engine: per-block latency, first block, VAE decode, peak memory (GPU)",
    "cycles": "sessions opened and ended 200 times: server RSS, threads and file descriptors must not grow",
    "audio-windows": "liveavatar: live rolling wav2vec windows against whole-file features (cosine per frame)",
    "outputs": "one session, 3 WHEP viewers + RTMP push (nginx) + recording: fps per consumer, CPU per consumer, RTMP A/V",
    "capacity": "sessions opened until refused (503), held 60 s: fps sent, repeated and dropped per session",
    "onsets": "lite motion at speech onsets: frames until the mouth is open, noise flicker, contact sheet",
    "browser-view": "headless Chromium viewer: a frame's last packet to the screen, jitter buffer, decode",
}

DESCRIPTION = "Run a benchmark; its results go under bench/results/.\n\nBenchmarks:\n" + "\n".join(
    f"  {name:<14} {help_text}" for name, help_text in BENCHMARKS.items()
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The benchmark's own options are parsed in run(), so only the chosen benchmark's module is
    # imported (the GPU one pulls in torch) and nothing depends on sys.argv.
    parser.add_argument("benchmark", choices=list(BENCHMARKS), metavar="NAME", help="one of: " + ", ".join(BENCHMARKS))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options (avatar bench NAME --help)")


class NoCheckout(RuntimeError):
    pass


def checkout_root() -> Path:
    """The repository checkout holding bench/ and tests/support/: the current directory or one above
    it, else the folder the package was installed from in editable mode."""
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, Path(live_avatar.__file__).resolve().parents[1]]
    for folder in candidates:
        if (folder / "bench" / "__init__.py").is_file() and (folder / "tests" / "support").is_dir():
            return folder
    raise NoCheckout("avatar bench runs from a checkout of the repository (its bench/ and tests/ folders); cd into one")


def benchmark_parser(name: str, prog: str = "avatar bench") -> argparse.ArgumentParser:
    root = str(checkout_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"bench.{name.replace('-', '_')}")
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=BENCHMARKS[name])
    module.add_arguments(parser)
    parser.set_defaults(_bench=module)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        parser = benchmark_parser(args.benchmark)
    except NoCheckout as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    bench_args = parser.parse_args(args.options)
    return int(bench_args._bench.run(bench_args) or 0)
