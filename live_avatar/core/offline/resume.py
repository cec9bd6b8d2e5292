"""The resume state of ``avatar generate``: files next to the output and the state written after each clip.

For an output ``talk.mp4``:
    talk.mp4.partial.ts   what is finished so far (plays in any player, see video_writer)
    talk.mp4.state        pickle: options fingerprint, clips done, partial-file size, generator and VAD state
    talk.mp4.work/        the prepared 16 kHz audio

The state is replaced atomically (temp file, fsync, rename) *after* the clip's segment is on disk,
so after a crash at any point the state describes a prefix of the partial file.
The state file is a pickle: it is only ever read back from the user's own output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1


class ResumeError(ValueError):
    """The state cannot be used for this command (other options, damaged file); user-facing message."""


@dataclass(frozen=True)
class RenderFiles:
    output: Path

    @property
    def partial(self) -> Path:
        return self.output.with_name(self.output.name + ".partial.ts")

    @property
    def state(self) -> Path:
        return self.output.with_name(self.output.name + ".state")

    @property
    def work_dir(self) -> Path:
        return self.output.with_name(self.output.name + ".work")

    def remove_all(self) -> None:
        """After success: only the final MP4 stays."""
        self.partial.unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)
        shutil.rmtree(self.work_dir, ignore_errors=True)


@dataclass
class RenderState:
    fingerprint: str  # hash of every option that changes the frames (see options_fingerprint)
    options: dict[str, Any]  # the same options in clear, to say which one differs
    clips_done: int
    frames_done: int
    partial_bytes: int  # size of the partial file at the end of the last finished clip
    generator_state: dict[str, Any]
    vad_state: Any = None
    version: int = STATE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def options_fingerprint(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(path: Path, state: RenderState) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def load_state(path: Path) -> RenderState:
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise ResumeError(f"the resume state {path} is unreadable ({exc}); delete it to start over") from None
    if not isinstance(state, RenderState) or state.version != STATE_VERSION:
        raise ResumeError(f"the resume state {path} is from another version; delete it to start over")
    return state


def check_compatible(state: RenderState, fingerprint: str, options: dict[str, Any]) -> None:
    """Refuse to resume with options that would render different frames."""
    if state.fingerprint == fingerprint:
        return
    differing = sorted(k for k in set(state.options) | set(options) if state.options.get(k) != options.get(k))
    details = ", ".join(f"{k}: was {state.options.get(k)!r}, now {options.get(k)!r}" for k in differing)
    raise ResumeError(
        f"cannot resume: the unfinished render used other options ({details or 'unknown difference'}); "
        "run with the same options, or delete the .partial.ts/.state files to start over"
    )
