"""Record what a server in this process logs (every logger, from a given level), to check that bad
input leaves at most a line and never a traceback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class LogRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self, since: int = 0) -> list[str]:
        """'logger: message' of each record from index ``since`` on that carries a traceback."""
        return [
            f"{r.name}: {r.getMessage()}"
            for r in self.records[since:]
            if r.exc_info is not None or "Traceback" in r.getMessage()
        ]


@contextlib.contextmanager
def recording_log(level: int = logging.INFO) -> Iterator[LogRecorder]:
    """A LogRecorder on the root logger, which passes ``level`` and above meanwhile."""
    recorder = LogRecorder()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(recorder)
    root.setLevel(level)
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        root.setLevel(old_level)
