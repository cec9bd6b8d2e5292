"""Named render presets (configs/presets/*.yaml) of ``avatar generate``.

A preset is a set of defaults with the reference tool's option names; explicit command-line flags
override it (``Preset.merged``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from live_avatar.core.config_loading import ConfigError, from_mapping, read_yaml_mapping
from live_avatar.resources import config_path

PRESETS_DIR = config_path("presets")
DEFAULT_PRESET = "standard"


class PresetError(ValueError):
    """Unknown or malformed preset; the message is user-facing."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    size: str = "704*384"  # area cap "W*H" (see live_avatar.core.offline.plan)
    num_clip: int | None = None  # None: as many clips as the audio needs
    infer_frames: int = 48
    sample_steps: int = 4
    sample_solver: str = "euler"
    sample_guide_scale: float = 0.0
    enable_online_decode: bool = True
    offload_model: bool = False

    def merged(self, overrides: dict[str, Any]) -> "Preset":
        """This preset with every non-None override applied (explicit flags win)."""
        known = {f.name for f in dataclasses.fields(self)}
        changes = {k: v for k, v in overrides.items() if k in known and v is not None}
        return dataclasses.replace(self, **changes)


def preset_names(directory: Path = PRESETS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_preset(name: str, directory: Path = PRESETS_DIR) -> Preset:
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise PresetError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names(directory))}")
    try:
        data = read_yaml_mapping(path)
        if "name" in data:
            raise ConfigError("a preset's name is its file name; remove the key", str(path), "name")
        return from_mapping(Preset, {**data, "name": name}, str(path))
    except ConfigError as exc:
        raise PresetError(f"preset {exc}") from None
