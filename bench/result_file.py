"""What every benchmark's JSON starts with (name, time, command, machine), and writing it."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any


def result_header(benchmark: str, argv: list[str] | None) -> dict[str, Any]:
    """``argv``: the arguments the benchmark was given (None: this process's command line)."""
    return {
        "benchmark": benchmark,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"python -m bench.{benchmark} " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu": platform.processor() or platform.machine()},
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
