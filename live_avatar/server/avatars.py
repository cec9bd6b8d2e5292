"""Prepared avatars by id: the default portrait and user uploads (validated, face found).

Decoding and face work (``engine.prepare_avatar``) run in a worker thread, never on the event loop.
An upload belongs to its owner (``auth.Caller.owner``: an access token or a browser session): only
the owner lists it and opens sessions with it; to anyone else its id is unknown. The built-in
default is shared. The store is bounded per owner: past ``max_avatars`` that owner's least
recently used upload is forgotten, so one owner's uploads never push out another's. It is bounded
in all too (``max_total``: every browser session is an owner): when full, the uploads of owners
idle for ``owner_idle_s`` are forgotten; if none is idle, a new upload is refused (StoreFull), never
taken from an active owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

from live_avatar.core.contract import AvatarError
from live_avatar.core.portraits import PortraitLimits, default_portrait, load_portrait, load_portrait_bytes

log = logging.getLogger(__name__)

DEFAULT_AVATAR_ID = "default"


class StoreFull(AvatarError):
    """Every kept upload belongs to an owner active within ``owner_idle_s``: no room (HTTP 503)."""


class AvatarStore:
    def __init__(
        self,
        engine: Any,
        limits: PortraitLimits,
        max_avatars: int = 32,
        max_total: int = 256,
        owner_idle_s: float = 3600.0,
        clock=time.monotonic,
    ) -> None:
        self._engine = engine
        self._limits = limits
        self._max = max_avatars
        self._max_total = max_total
        self._owner_idle_s = owner_idle_s
        self._clock = clock
        self._uploads: dict[str, OrderedDict[str, Any]] = {}  # owner -> avatar id -> avatar, least recently used first
        self._last_active: dict[str, float] = {}  # owner -> when it last uploaded, listed or used a portrait
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

    async def add_upload(self, data: bytes, name: str, owner: str) -> str:
        """Validate and prepare an uploaded image for ``owner``; raises AvatarError with a
        user-facing message."""

        def prepare() -> Any:
            image = load_portrait_bytes(data, self._limits)
            return self._engine.prepare_avatar(image)

        self._make_room(owner)  # before the CPU is spent
        async with self._lock:
            avatar = await asyncio.to_thread(prepare)
        self._make_room(owner)  # others may have uploaded meanwhile
        self._last_active[owner] = self._clock()
        avatar_id = uuid.uuid4().hex[:12]
        owned = self._uploads.setdefault(owner, OrderedDict())
        owned[avatar_id] = avatar
        self._names[avatar_id] = name
        while len(owned) > self._max:
            old, _ = owned.popitem(last=False)
            self._names.pop(old, None)
        return avatar_id

    def _make_room(self, owner: str) -> None:
        """Room for one more upload of ``owner``: its own oldest goes at its per-owner bound (in
        add_upload); at the total bound idle owners' uploads go, else StoreFull."""
        owned = self._uploads.get(owner)
        if len(self) < self._max_total or (owned is not None and len(owned) >= self._max):
            return
        now = self._clock()
        for idle in [o for o, t in self._last_active.items() if now - t >= self._owner_idle_s and o != owner]:
            for avatar_id in self._uploads.pop(idle, {}):
                self._names.pop(avatar_id, None)
            del self._last_active[idle]
        if len(self) >= self._max_total:
            raise StoreFull(
                f"the server keeps {self._max_total} uploaded portraits, all of owners active in the last "
                f"{self._owner_idle_s / 60:.0f} minutes; try again later or use one you uploaded before"
            )

    def get(self, avatar_id: str | None, owner: str | None = None) -> Any:
        """The prepared avatar; None/"" means the default. Raises KeyError for ids that are
        unknown or belong to another owner (the same to the caller)."""
        if not avatar_id or avatar_id == DEFAULT_AVATAR_ID:
            if self._default is None:
                raise KeyError(DEFAULT_AVATAR_ID)
            return self._default
        owned = self._uploads.get(owner) if owner is not None else None
        if owned is None or avatar_id not in owned:
            raise KeyError(avatar_id)
        owned.move_to_end(avatar_id)
        self._last_active[owner] = self._clock()
        return owned[avatar_id]

    def list(self, owner: str | None = None) -> list[dict[str, str]]:
        """The avatars ``owner`` may use: the built-in default, then its own uploads."""
        ids = ([DEFAULT_AVATAR_ID] if self._default is not None else []) + list(self._uploads.get(owner, ()) if owner is not None else ())
        return [{"avatar_id": i, "name": self._names.get(i, i)} for i in ids]

    def __len__(self) -> int:
        """Uploads kept, all owners together."""
        return sum(len(owned) for owned in self._uploads.values())


__all__ = ["AvatarStore", "AvatarError", "DEFAULT_AVATAR_ID", "StoreFull"]
