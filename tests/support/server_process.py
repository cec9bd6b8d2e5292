"""``avatar serve`` in a child process (browser tests, the tiny-engine test, the e2e benchmark).

A child process keeps the server's event loop, CPU and memory apart from the caller's; its output
goes to a log file (never an unread pipe, which would block the server once full).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.inprocess import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 10.0, headers: dict | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body or text) of a request; HTTP errors are answers, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


class ServerProcess:
    """``avatar serve --host 127.0.0.1 --port <free> *serve_args``; ``start()`` returns once /healthz answers."""

    def __init__(self, serve_args: list[str], log_path: Path, *, start_timeout_s: float = 120.0, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.serve_args = list(serve_args)
        self.log_path = Path(log_path)
        self.start_timeout_s = start_timeout_s
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "ServerProcess":
        cmd = [sys.executable, "-m", "live_avatar.cli.main", "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.serve_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if http_json("GET", f"{self.url}/healthz", timeout=2.0)[0] == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not healthy after {self.start_timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
