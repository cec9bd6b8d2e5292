"""The live sessions of one server: admission (max sessions, engine capacity, sessions per client),
lookup, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from live_avatar.core.contract import EngineBusyError
from live_avatar.core.stream import StreamConfig
from live_avatar.server.config import SessionConfig
from live_avatar.server.metrics import ServerMetrics
from live_avatar.server.session import AvatarSession

log = logging.getLogger(__name__)


class CapacityError(RuntimeError):
    """No room for another session; the message says why (user-facing)."""


class ClientLimitError(RuntimeError):
    """This client already has as many sessions as one client may (HTTP 429); user-facing."""


class SessionManager:
    def __init__(self, engine: Any, config: SessionConfig, metrics: ServerMetrics, max_per_client: int | None = None) -> None:
        self._engine = engine
        self._config = config
        self._metrics = metrics
        self._max_per_client = max_per_client
        self._sessions: dict[str, AvatarSession] = {}
        self._opening = 0  # sessions admitted but still opening (counted against the limits)
        self._opening_by_client: Counter[str] = Counter()
        self.monitor: Any = None  # capacity.CapacityMonitor: admits only what keeps every session at its rate
        self.pauses: Any = None  # pause_watch.PauseWatch: the process's pauses, in every session's stats

    @property
    def engine(self) -> Any:
        return self._engine

    @property
    def limit(self) -> int:
        capacity = getattr(self._engine, "capacity", None)
        limit = self._config.max_sessions
        return min(limit, capacity) if capacity is not None else limit

    def check_capacity(self, client: str | None = None) -> None:
        """Raise CapacityError when the server or engine is full, ClientLimitError when ``client``
        has its most sessions (opening ones count)."""
        count = len(self._sessions) + self._opening
        if count >= self._config.max_sessions:
            self._metrics.sessions_refused.inc()
            raise CapacityError(f"the server is full ({count} of max_sessions={self._config.max_sessions} live sessions)")
        capacity = getattr(self._engine, "capacity", None)
        if capacity is not None and count >= capacity:
            self._metrics.sessions_refused.inc()
            raise CapacityError(f"the {getattr(self._engine, 'name', 'avatar')} engine is at capacity ({capacity} real-time sessions)")
        reason = self.monitor.check(self._opening) if self.monitor is not None else None
        if reason is not None:
            self._metrics.sessions_refused.inc()
            raise CapacityError(reason)
        if client is not None and self._max_per_client is not None:
            mine = sum(1 for s in self._sessions.values() if s.client == client) + self._opening_by_client[client]
            if mine >= self._max_per_client:
                self._metrics.sessions_refused.inc()
                raise ClientLimitError(
                    f"you already have {mine} live sessions, the most one client may have "
                    f"(limits.max_sessions_per_client={self._max_per_client}); end one first"
                )

    async def create(
        self, avatar: Any, prompt: str | None, client: str | None = None, *, buffered_speech_s: float | None = None
    ) -> AvatarSession:
        """Open an engine session (off the event loop: engines may load or warm up) and register
        it; ``client`` (who asked, for the per-client limit) is kept on the session.
        ``buffered_speech_s``: the session plays pushed speech (a TTS over the audio WebSocket),
        queued up to that many seconds, instead of a live microphone."""
        self.check_capacity(client)
        self._opening += 1
        if client is not None:
            self._opening_by_client[client] += 1
        try:
            # the runtime's schedule (and its skip-ahead rule) must know the playout's delay
            stream_config = StreamConfig(playout_margin_s=self._config.playout_delay_ms / 1000.0)
            if buffered_speech_s is not None:
                stream_config = StreamConfig(
                    playout_margin_s=stream_config.playout_margin_s, buffered=True, max_buffered_audio_s=buffered_speech_s
                )
            stream = await asyncio.to_thread(self._engine.open_session, avatar, prompt, config=stream_config)
        except EngineBusyError as exc:
            self._metrics.sessions_refused.inc()
            raise CapacityError(str(exc) or "the engine is at capacity") from None
        finally:
            self._opening -= 1
            if client is not None:
                self._opening_by_client[client] -= 1
                if self._opening_by_client[client] <= 0:
                    del self._opening_by_client[client]
        session = AvatarSession(stream, self._config, self._metrics, client=client, on_closed=self._forget)
        if buffered_speech_s is not None:
            session.audio_source = "websocket"
        if self.pauses is not None:
            session.stats_sections["process_pauses"] = lambda: self.pauses.summary(since=session.created_at)
        if self.monitor is not None:
            session.capacity_stats = lambda: self.monitor.session_stats(session.id)
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
