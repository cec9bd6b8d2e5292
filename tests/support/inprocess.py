"""Run the server inside the current event loop (tests, benchmarks): ``async with serve_in_process(...)``."""

from __future__ import annotations

import contextlib
import gc
import socket
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web

from live_avatar.server.app import app_state, create_app
from live_avatar.server.config import ServerConfig


@dataclass
class RunningServer:
    url: str
    app: web.Application

    @property
    def state(self) -> dict[str, Any]:
        return app_state(self.app)


@contextlib.contextmanager
def heap_frozen_as_serve_does():
    """What ``avatar serve`` does once it is up (server/gc_tuning.py): collect, then freeze what is
    alive. A test process's heap (every module and fixture of the suite, ~500 000 objects) would
    otherwise make each automatic full collection a 0.3-1 s stall of every live session in it, which
    is the test process's cost, not the server's."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def serve_in_process(config: ServerConfig | None = None, engine: Any = None) -> AsyncIterator[RunningServer]:
    """Start the app on ``config.host`` and a free port (config.port 0) or the configured one."""
    config = config or ServerConfig(port=0)
    port = config.port or free_port(config.host)
    config.port = port
    app = create_app(config, engine=engine)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, port)
        await site.start()
        yield RunningServer(url=f"http://{config.host}:{port}", app=app)
    finally:
        await runner.cleanup()
