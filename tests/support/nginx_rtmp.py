"""nginx with Debian's libnginx-mod-rtmp as a child process on a loopback port: an RTMP ingest for
the push tests and the outputs benchmark. Its own config, pid and logs live in a temporary folder;
``stop()`` and ``start()`` again take the ingest away and bring it back on the same port."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from tests.support.inprocess import free_port

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """load_module {module};
daemon off;
master_process off;
worker_processes 1;
error_log {folder}/error.log info;
pid {folder}/nginx.pid;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
            allow publish 127.0.0.1;
            allow play 127.0.0.1;
        }}
    }}
}}
"""


def nginx_rtmp_missing() -> str | None:
    """Why nginx-rtmp cannot run here (for a skip message), or None."""
    if not Path(NGINX).exists():
        return "nginx is missing (scripts/test.sh installs Debian's nginx and libnginx-mod-rtmp)"
    if not RTMP_MODULE.exists():
        return f"{RTMP_MODULE} is missing (apt-get install libnginx-mod-rtmp)"
    return None


class NginxRtmp:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.folder / "nginx.conf"
        self.conf.write_text(CONFIG.format(module=RTMP_MODULE, folder=self.folder, port=self.port))
        self.proc: subprocess.Popen | None = None

    def url(self, key: str = "avatar") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self, timeout_s: float = 10.0) -> NginxRtmp:
        with open(self.folder / "stdout.log", "ab") as log:  # the child keeps its own copy of the handle
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.folder), "-e", str(self.folder / "error.log"), "-c", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.port} within {timeout_s:g} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, chars: int = 2000) -> str:
        path = self.folder / "error.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


STREAM_AND_PACKET_FIELDS = (
    "stream=index,codec_type,codec_name,r_frame_rate,avg_frame_rate,sample_rate,width,height"
    ":packet=stream_index,pts_time,dts_time,flags"
)


def probe_stream(url: str, read_s: float = 3.0, timeout_s: float = 20.0) -> dict:
    """ffprobe of a live stream pulled back over RTMP: streams (codec, rates) and ``read_s`` seconds
    of packets (stream index, pts and flags in seconds), as ffprobe's JSON."""
    cmd = [
        "ffprobe", "-v", "error", "-rw_timeout", str(int(timeout_s * 1e6)),
        "-read_intervals", f"%+{read_s}",
        "-show_entries", STREAM_AND_PACKET_FIELDS,
        "-of", "json", url,
    ]
    out = subprocess.run(cmd, capture_output=True, timeout=timeout_s + read_s + 10, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ffprobe {url} failed ({out.returncode}): {out.stderr.decode(errors='replace')[-500:]}")
    return json.loads(out.stdout)
