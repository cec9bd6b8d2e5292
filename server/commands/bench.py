"""``avatar bench NAME``: each benchmark is a module bench/NAME.py with add_arguments(p) and run(args)."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "lite": "lite engine: fps and CPU-seconds per second of video, 1 and 4 sessions",
    "e2e": "end to end over loopback WebRTC: speech-to-lips, first frame, A/V offset, memory",
    "generate": "offline generation: peak RSS and real-time factor vs. length",
    "liveavatar": "liveavatar engine: per-block latency, first block, VAE decode, peak memory (GPU)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    selected = next((a for a in sys.argv[2:] if not a.startswith("-")), None)
    for name, help_text in BENCHMARKS.items():
        if name != selected:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"bench.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_bench=module)


def run(args: argparse.Namespace) -> int:
    return int(args._bench.run(args) or 0)
