"""Keep MediaPipe's native (absl / TF Lite) info and warning lines off the user's terminal.

MediaPipe's C++ side logs through absl before ``absl::InitializeLog()``, which no environment
variable (GLOG_minloglevel, TF_CPP_MIN_LOG_LEVEL) silences, and the Python API cannot reach it.
So file descriptor 2 is pointed at a temporary file while a graph is built and run, and afterwards
every line that is not such routine noise is written back: errors and whatever other threads
printed meanwhile are delayed, never lost.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# absl's "I0000 00:00:..." / "W0000 ..." lines and TF Lite's own banners; E and F lines stay.
NATIVE_NOISE = re.compile(
    rb"^(?:[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] "
    rb"|INFO: Created TensorFlow Lite"
    rb"|WARNING: All log messages before absl::InitializeLog\(\))"
)


@contextmanager
def quiet_native_logs(noise: re.Pattern[bytes] = NATIVE_NOISE) -> Iterator[None]:
    """Drop native log lines matching ``noise`` written to fd 2 inside the block. Not re-entrant:
    callers serialise it (the MediaPipe lock does)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = b"".join(line for line in capture.read().splitlines(keepends=True) if not noise.match(line))
            if kept:
                os.write(2, kept)
