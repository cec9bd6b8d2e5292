"""The chunk runtime: drives an engine's BlockGenerator in real time (DESIGN.md §2)."""

from live_avatar.core.stream.config import StreamConfig
from live_avatar.core.stream.session import BufferFullError, StreamSession, StreamSessionError

__all__ = ["BufferFullError", "StreamConfig", "StreamSession", "StreamSessionError"]
