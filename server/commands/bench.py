"""``avatar bench NAME``: each benchmark is a module bench/NAME.py with add_arguments(p) and run(args)."""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "lite": "lite engine: fps and CPU-seconds per second of video, 1 and 4 sessions",
    "e2e": "end to end over loopback WebRTC: speech-to-lips, first frame, A/V offset, memory",
    "generate": "offline generation: peak RSS and real-time factor vs. length",
    "liveavatar": "liveavatar engine: per-block latency, first block, VAE decode, peak memory (GPU)",
}

DESCRIPTION = "Run a benchmark; its results go under bench/results/.\n\nBenchmarks:\n" + "\n".join(
    f"  {name:<11} {help_text}" for name, help_text in BENCHMARKS.items()
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The benchmark's own options are parsed in run(), so only the chosen benchmark's module is
    # imported (the GPU one pulls in torch) and nothing depends on sys.argv.
    parser.add_argument("benchmark", choices=list(BENCHMARKS), metavar="NAME", help="one of: " + ", ".join(BENCHMARKS))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options (avatar bench NAME --help)")


def benchmark_parser(name: str, prog: str = "avatar bench") -> argparse.ArgumentParser:
    module = importlib.import_module(f"bench.{name}")
    parser = argparse.ArgumentParser(prog=f"{prog} {name}", description=BENCHMARKS[name])
    module.add_arguments(parser)
    parser.set_defaults(_bench=module)
    return parser


def run(args: argparse.Namespace) -> int:
    bench_args = benchmark_parser(args.benchmark).parse_args(args.options)
    return int(bench_args._bench.run(bench_args) or 0)
