"""One LoopbackPeer session in a child process: ``PeerProcess(url, wav).start()`` ... ``.finish()``.

For tests that stress a server (``ServerProcess``) from the test process while a session streams:
the peer that measures the stream must not share the test's interpreter, whose own work (hypothesis
drawing examples, full garbage collections of the suite's heap) would stall the peer's event loop
and read as a stall of the server. The child connects through POST /offer, says it streams, and on
a line on its stdin watches one more window and reports what it received, as JSON.

Run as ``python -m tests.support.peer_process URL WAV READY_JSON REPORT_JSON``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.support.server_process import REPO_ROOT


class PeerProcess:
    def __init__(self, base_url: str, wav: Path, workdir: Path) -> None:
        self.base_url = base_url
        self.wav = Path(wav)
        self.ready_path = Path(workdir) / "peer_ready.json"
        self.report_path = Path(workdir) / "peer_report.json"
        self.log_path = Path(workdir) / "peer.log"
        self.proc: subprocess.Popen | None = None
        self.session_id: str | None = None

    def start(self, timeout_s: float = 60.0) -> "PeerProcess":
        """Start the child; returns once its session streams (``session_id`` set)."""
        cmd = [sys.executable, "-m", "tests.support.peer_process", self.base_url, str(self.wav),
               str(self.ready_path), str(self.report_path)]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.ready_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the peer did not start streaming:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        self.session_id = json.loads(self.ready_path.read_text())["session_id"]
        return self

    def finish(self, timeout_s: float = 30.0) -> dict:
        """Ask the child for its report (it watches one more window first); the report."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"report\n")
        self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            self.stop()
        if not self.report_path.exists():
            raise RuntimeError(f"the peer wrote no report:\n{self.log_path.read_text(errors='replace')[-3000:]}")
        return json.loads(self.report_path.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


def _write_json(path: Path, payload: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload))
    partial.replace(path)  # the parent never reads half a file


async def _run(base_url: str, wav: str, ready_path: Path, report_path: Path, window_s: float = 1.0) -> None:
    import numpy as np

    from tests.support.live_checks import start_streaming

    peer = await start_streaming(base_url, wav)
    try:
        _write_json(ready_path, {"session_id": peer.session_id})
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        before = len(peer.video_frames)
        await asyncio.sleep(window_s)
        arrivals = np.array([f.arrival for f in peer.video_frames])
        gaps = np.diff(arrivals)
        worst = int(gaps.argmax())
        _write_json(report_path, {
            "session_id": peer.session_id,
            "frames": int(arrivals.size),
            "window_s": window_s,
            "frames_in_window": int(arrivals.size - before),
            "max_gap_s": float(gaps[worst]),
            "max_gap_at_s": float(arrivals[worst] - arrivals[0]),  # seconds after the first frame
        })
    finally:
        await peer.close()


if __name__ == "__main__":
    url, wav_path, ready, report = sys.argv[1:5]
    asyncio.run(_run(url, wav_path, Path(ready), Path(report)))
