"""Which avatar and prompt a session shows, and changing them mid-session (PATCH /sessions/{id},
the audio WebSocket's ``update`` message).

A change goes to the engine's generator through ``StreamSession.change_avatar``: it is taken before
the next block (lite: a short cross-fade; liveavatar: from the next clip boundary, its sink rebuilt
from the new reference). The playout and every output keep running; the session's stats say what
is live (``avatar``: the change counts as live once its first frame was played) and what is pending.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from live_avatar.core.contract import ChangeNotSupported
from live_avatar.server.media.playout import OutputSlot

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 2000  # as POST /offer


class ChangeRefused(ValueError):
    """The change cannot be made; ``status`` is the HTTP status, the message is user-facing."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ChangeRequest:
    avatar_id: str | None  # None: unchanged
    prompt: str | None  # None: unchanged; "": the engine's default


def parse_change(params: Any) -> ChangeRequest:
    """``{"avatar_id"?, "prompt"?}`` (other keys, e.g. "type", are ignored); raises ChangeRefused."""
    if not isinstance(params, dict):
        raise ChangeRefused('send a JSON object: {"avatar_id"?, "prompt"?}')
    avatar_id, prompt = params.get("avatar_id"), params.get("prompt")
    if avatar_id is not None and (not isinstance(avatar_id, str) or not avatar_id):
        raise ChangeRefused("avatar_id must be a non-empty string")
    if "prompt" in params and prompt is None:
        prompt = ""
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS):
        raise ChangeRefused(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters")
    if avatar_id is None and prompt is None:
        raise ChangeRefused("nothing to change: send avatar_id and/or prompt")
    return ChangeRequest(avatar_id, prompt)


class AvatarChanges:
    """One per session: the live avatar/prompt, the pending change, and applying changes."""

    def __init__(self, session: Any, avatar_id: str | None, prompt: str | None) -> None:
        self.session = session
        self.live = {"avatar_id": avatar_id or "default", "prompt": prompt or None}
        self.pending: dict | None = None
        self.changes_applied = 0
        self.last_error: str | None = None
        self._from_frame: int | None = None  # first frame of the pending change (once the generator took it)
        self._token = 0
        self.listeners: list[Callable[[dict], None]] = []  # told when a change is live or failed
        session.avatar_changes = self
        session.add_slot_listener(self._on_slot)
        session.stats_sections["avatar"] = self.stats

    @classmethod
    def of(cls, session: Any) -> AvatarChanges:
        """The session's tracker (made on first use: sessions opened without one show the default)."""
        return getattr(session, "avatar_changes", None) or cls(session, None, None)

    def request(self, change: ChangeRequest, avatar: Any) -> dict:
        """Hand the change to the generator; ``avatar`` is the prepared portrait (None: unchanged)."""
        loop = asyncio.get_running_loop()
        self._token += 1
        token = self._token
        base = self.pending or self.live  # a change not yet shown is merged into (the runtime merges too)
        target = {
            "avatar_id": change.avatar_id or base["avatar_id"],
            "prompt": (change.prompt or None) if change.prompt is not None else base["prompt"],
        }

        def applied(frame: int | None, error: BaseException | None) -> None:  # worker thread
            loop.call_soon_threadsafe(self._applied, token, frame, error)

        try:
            self.session.stream.change_avatar(avatar, change.prompt, on_applied=applied)
        except ChangeNotSupported as exc:
            raise ChangeRefused(str(exc), status=409) from None
        except RuntimeError as exc:
            raise ChangeRefused(f"the session is not running: {exc}", status=409) from None
        self.pending, self._from_frame = target, None
        return target

    def _applied(self, token: int, frame: int | None, error: BaseException | None) -> None:
        if token != self._token:
            return  # a newer change replaced this one
        if error is not None:
            self.last_error = str(error)
            self.pending, self._from_frame = None, None
            self._tell({"type": "error", "error": f"the avatar/prompt change failed: {error}"})
            return
        self._from_frame = frame

    def _on_slot(self, slot: OutputSlot) -> None:
        if self.pending is None or self._from_frame is None or slot.frame_index < self._from_frame:
            return
        self.live, self.pending, self._from_frame = self.pending, None, None
        self.changes_applied += 1
        log.info("session %s: now showing avatar %s", self.session.id, self.live["avatar_id"])
        self._tell({"type": "updated", **self.live})

    def _tell(self, event: dict) -> None:
        for listener in list(self.listeners):
            listener(event)

    def stats(self) -> dict[str, Any]:
        return {**self.live, "pending": self.pending, "changes_applied": self.changes_applied, "last_error": self.last_error}


__all__ = ["AvatarChanges", "ChangeRefused", "ChangeRequest", "parse_change"]
