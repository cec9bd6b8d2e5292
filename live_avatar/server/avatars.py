"""Prepared avatars by id: the default portrait and user uploads (validated, face found).

Decoding and face work (``engine.prepare_avatar``) run in a worker thread, never on the event loop.
The store is bounded: past ``max_avatars`` the least recently used upload is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from live_avatar.core.contract import AvatarError
from live_avatar.core.portraits import PortraitLimits, default_portrait, load_portrait, load_portrait_bytes

log = logging.getLogger(__name__)

DEFAULT_AVATAR_ID = "default"


class AvatarStore:
    def __init__(self, engine: Any, limits: PortraitLimits, max_avatars: int = 32) -> None:
        self._engine = engine
        self._limits = limits
        self._max = max_avatars
        self._avatars: OrderedDict[str, Any] = OrderedDict()
        self._names: dict[str, str] = {}
        self._default: Any = None
        self._lock = asyncio.Lock()  # one face preparation at a time: bounded CPU for uploads

    async def load_default(self, image_path: str | None) -> None:
        """Prepare the default avatar (from ``image_path``, else the built-in portrait)."""

        def prepare() -> Any:
            image = load_portrait(Path(image_path), self._limits) if image_path else default_portrait()
            return self._engine.prepare_avatar(image)

        self._default = await asyncio.to_thread(prepare)
        self._names[DEFAULT_AVATAR_ID] = Path(image_path).name if image_path else "default"

    async def add_upload(self, data: bytes, name: str = "upload") -> str:
        """Validate and prepare an uploaded image; raises AvatarError with a user-facing message."""

        def prepare() -> Any:
            image = load_portrait_bytes(data, self._limits)
            return self._engine.prepare_avatar(image)

        async with self._lock:
            avatar = await asyncio.to_thread(prepare)
        avatar_id = uuid.uuid4().hex[:12]
        self._avatars[avatar_id] = avatar
        self._names[avatar_id] = name
        while len(self._avatars) > self._max:
            old, _ = self._avatars.popitem(last=False)
            self._names.pop(old, None)
        return avatar_id

    def get(self, avatar_id: str | None) -> Any:
        """The prepared avatar; None/"" means the default. Raises KeyError for unknown ids."""
        if not avatar_id or avatar_id == DEFAULT_AVATAR_ID:
            if self._default is None:
                raise KeyError(DEFAULT_AVATAR_ID)
            return self._default
        avatar = self._avatars[avatar_id]
        self._avatars.move_to_end(avatar_id)
        return avatar

    def list(self) -> list[dict[str, str]]:
        ids = ([DEFAULT_AVATAR_ID] if self._default is not None else []) + list(self._avatars)
        return [{"avatar_id": i, "name": self._names.get(i, i)} for i in ids]


__all__ = ["AvatarStore", "AvatarError", "DEFAULT_AVATAR_ID"]
