"""ServerConfig: the server's settings, loaded from configs/server.yaml and overridden by flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "server.yaml"


@dataclass
class SessionConfig:
    max_sessions: int = 4
    playout_delay_ms: float = 40.0
    max_buffered_frames: int = 50
    consumer_queue_slots: int = 4
    idle_timeout_s: float = 15.0


@dataclass
class WebRTCConfig:
    ice_host_addresses: list[str] = field(default_factory=list)
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    audio_jitter_prefetch: int = 1


@dataclass
class LimitsConfig:
    max_sdp_bytes: int = 64 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_avatars: int = 32


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    engine: str = "lite"
    engine_options: dict[str, Any] = field(default_factory=dict)
    avatar: str | None = None
    sessions: SessionConfig = field(default_factory=SessionConfig)
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def ice_host_addresses(self) -> list[str] | None:
        """Addresses to offer as host candidates; None means every non-loopback interface."""
        if self.webrtc.ice_host_addresses:
            return list(self.webrtc.ice_host_addresses)
        if self.host in ("", "0.0.0.0", "::"):
            return None
        if self.host == "localhost":
            return ["127.0.0.1"]
        return [self.host]


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Dataclass from a mapping; unknown keys are an error (a typo must not be silently ignored)."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_server_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Read ``path`` (default configs/server.yaml), then apply top-level overrides that are not None."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    values: dict[str, Any] = {}
    if path.exists():
        values = yaml.safe_load(path.read_text()) or {}
    elif path != DEFAULT_CONFIG_PATH:
        raise FileNotFoundError(f"config file not found: {path}")
    config = _build(ServerConfig, values, str(path.name))
    for name, value in overrides.items():
        if value is None:
            continue
        if not hasattr(config, name):
            raise ValueError(f"unknown server option {name!r}")
        setattr(config, name, value)
    return config
