"""The live sessions of one server: admission (max sessions, engine capacity), lookup, shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from live_avatar.core.contract import EngineBusyError
from live_avatar.core.stream import StreamConfig
from live_avatar.server.config import SessionConfig
from live_avatar.server.metrics import ServerMetrics
from live_avatar.server.session import AvatarSession

log = logging.getLogger(__name__)


class CapacityError(RuntimeError):
    """No room for another session; the message says why (user-facing)."""


class SessionManager:
    def __init__(self, engine: Any, config: SessionConfig, metrics: ServerMetrics) -> None:
        self._engine = engine
        self._config = config
        self._metrics = metrics
        self._sessions: dict[str, AvatarSession] = {}
        self._opening = 0  # sessions admitted but still opening (counted against the limits)

    @property
    def limit(self) -> int:
        capacity = getattr(self._engine, "capacity", None)
        limit = self._config.max_sessions
        return min(limit, capacity) if capacity is not None else limit

    def check_capacity(self) -> None:
        count = len(self._sessions) + self._opening
        if count >= self._config.max_sessions:
            self._metrics.sessions_refused.inc()
            raise CapacityError(f"the server is full ({count} of max_sessions={self._config.max_sessions} live sessions)")
        capacity = getattr(self._engine, "capacity", None)
        if capacity is not None and count >= capacity:
            self._metrics.sessions_refused.inc()
            raise CapacityError(f"the {getattr(self._engine, 'name', 'avatar')} engine is at capacity ({capacity} real-time sessions)")

    async def create(self, avatar: Any, prompt: str | None) -> AvatarSession:
        """Open an engine session (off the event loop: engines may load or warm up) and register it."""
        self.check_capacity()
        self._opening += 1
        try:
            # the runtime's schedule (and its skip-ahead rule) must know the playout's delay
            stream_config = StreamConfig(playout_margin_s=self._config.playout_delay_ms / 1000.0)
            stream = await asyncio.to_thread(self._engine.open_session, avatar, prompt, config=stream_config)
        except EngineBusyError as exc:
            self._metrics.sessions_refused.inc()
            raise CapacityError(str(exc) or "the engine is at capacity") from None
        finally:
            self._opening -= 1
        session = AvatarSession(stream, self._config, self._metrics, on_closed=self._forget)
        self._sessions[session.id] = session
        self._metrics.active_sessions.set(len(self._sessions))
        return session

    def _forget(self, session: AvatarSession) -> None:
        if self._sessions.pop(session.id, None) is not None:
            self._metrics.active_sessions.set(len(self._sessions))

    def get(self, session_id: str) -> AvatarSession | None:
        return self._sessions.get(session_id)

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[AvatarSession]:
        return list(self._sessions.values())

    async def close_all(self, reason: str = "server shutting down") -> None:
        await asyncio.gather(*(s.close(reason) for s in self.all()), return_exceptions=True)
