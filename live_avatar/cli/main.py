"""The ``avatar`` command: one entry point, one module per subcommand (live_avatar/cli/)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module in live_avatar.cli exposing add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "serve": ("serve", "run the live avatar server (WebRTC, WHIP, HTTP API)"),
    "generate": ("generate", "render a talking-portrait video offline from an image and an audio file"),
    "bench": ("bench", "run reproducible benchmarks and write JSON results under bench/results/"),
    "preflight": ("preflight", "say whether an engine configuration fits a GPU, how many sessions, what fps (no GPU needed)"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Only the selected subcommand's module is imported (serve must not pay for the GPU engine)."""
    parser = argparse.ArgumentParser(prog="avatar", description="Live Avatar Server")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name != selected:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"live_avatar.cli.{module_name}")
        p = sub.add_parser(
            name,
            help=help_text,
            description=getattr(module, "DESCRIPTION", help_text),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
