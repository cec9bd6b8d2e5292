"""The aiohttp application: ``create_app(config, engine=None)``.

The engine is loaded at startup in a worker thread (unless one is passed in, as tests do), the
default avatar is prepared, and on shutdown every session and peer connection is closed.

Middlewares, outermost first: the Origin check and CORS headers (server/origins.py, around
everything so that error answers carry them too), JSON errors, then access tokens and the caller's
identity (server/auth.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from aiohttp import web

from live_avatar.core.portraits import PortraitLimits
from live_avatar.server.auth import AccessGuard
from live_avatar.server.avatars import AvatarStore
from live_avatar.server.capacity import CapacityMonitor, cached_session_cost
from live_avatar.server.config import ServerConfig
from live_avatar.server.http_errors import install_json_http_errors, json_errors
from live_avatar.server.metrics import ServerMetrics
from live_avatar.server.origins import OriginPolicy
from live_avatar.server.pause_watch import PauseWatch
from live_avatar.server.routes import Api
from live_avatar.server.sessions import SessionManager
from live_avatar.server.webrtc.signaling import PeerConnector

log = logging.getLogger(__name__)

STATE_KEY = web.AppKey("avatar_server", dict)


def create_app(config: ServerConfig | None = None, engine: Any = None) -> web.Application:
    config = config or ServerConfig()
    origins = OriginPolicy(config.cors.allow_origins)
    guard = AccessGuard(config.auth.tokens)
    app = web.Application(
        middlewares=[origins.middleware, json_errors, guard.middleware],
        client_max_size=config.limits.max_upload_bytes + 1024 * 1024,
    )
    install_json_http_errors(app)  # aiohttp's own errors (malformed requests) as JSON too
    state: dict[str, Any] = {"config": config, "engine": engine, "metrics": ServerMetrics()}
    app[STATE_KEY] = state

    owns_engine = engine is None

    async def startup(app: web.Application) -> None:
        if state["engine"] is None:
            from live_avatar.core.engines import load_engine

            log.info("loading the %s engine", config.engine)
            state["engine"] = await asyncio.to_thread(load_engine, config.engine, **config.engine_options)
        engine = state["engine"]
        if getattr(engine, "wants_warmup", False):  # compile and autotune now, not in the first user's session
            await asyncio.to_thread(engine.warm_up, log.info)
        # an engine may measure its capacity on first use (seconds of rendering): not on the loop
        capacity = await asyncio.to_thread(lambda: getattr(engine, "capacity", None))
        log.info("%s engine ready: capacity %s real-time sessions", getattr(engine, "name", config.engine), capacity)
        limits = PortraitLimits(max_bytes=config.limits.max_upload_bytes, max_pixels=config.limits.max_image_pixels)
        avatars = AvatarStore(
            engine, limits, max_avatars=config.limits.max_avatars, max_total=config.limits.max_avatars_total,
            owner_idle_s=config.limits.avatar_owner_idle_s,
        )
        await avatars.load_default(config.avatar)
        sessions = SessionManager(engine, config.sessions, state["metrics"], max_per_client=config.limits.max_sessions_per_client)
        if config.capacity.enabled and os.environ.get("AVATAR_CAPACITY_ADMISSION", "on") != "off":
            cost = await asyncio.to_thread(cached_session_cost, engine)
            log.info("one session costs ~%.2f CPU cores at start-up (%s)", cost["total"],
                     ", ".join(f"{k} {v:.3f}" for k, v in cost.items() if k != "total"))
            sessions.monitor = CapacityMonitor(config.capacity, sessions.all, startup_cost=cost, metrics=state["metrics"])
            sessions.monitor.start()
        pauses = state["pauses"] = PauseWatch(on_pause=state["metrics"].observe_pause)
        pauses.start()  # every session's stats carry the process's pauses since it began (process_pauses)
        sessions.pauses = pauses
        connector = PeerConnector(config, sessions)
        state.update(avatars=avatars, sessions=sessions, connector=connector)
        api.bind(avatars, sessions, connector)

    async def shutdown(app: web.Application) -> None:
        if "pauses" in state:
            await state["pauses"].stop()
        if "sessions" in state:
            if state["sessions"].monitor is not None:
                await state["sessions"].monitor.stop()
            await state["sessions"].close_all()
            await state["connector"].close_all()
        if owns_engine and state["engine"] is not None:
            await asyncio.to_thread(state["engine"].close)

    api = _LateApi(config, state["metrics"])
    api.register(app)
    for resource in api.open_resources:
        guard.open_to_all(resource)
    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    return app


class _LateApi(Api):
    """Routes must be registered before startup; the parts that need the engine are bound at startup."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics) -> None:
        super().__init__(config, None, None, None, metrics)  # type: ignore[arg-type]

    def bind(self, avatars: AvatarStore, sessions: SessionManager, connector: PeerConnector) -> None:
        self.avatars, self.sessions, self.connector = avatars, sessions, connector


def app_state(app: web.Application) -> dict[str, Any]:
    return app[STATE_KEY]


__all__ = ["create_app", "app_state"]
