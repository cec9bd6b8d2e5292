"""ServerConfig: the server's settings, loaded from configs/server.yaml and overridden by flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from live_avatar.resources import config_path

DEFAULT_CONFIG_PATH = config_path("server.yaml")


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
    defaults = cls()
    for name, value in values.items():
        default = getattr(defaults, name)
        if is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        else:
            _check_type(value, default, f"{where}.{name}")
            kwargs[name] = value
    return cls(**kwargs)


def _check_type(value: Any, default: Any, where: str) -> None:
    """A value must have its default's type (an int may stand for a float); None defaults take anything."""
    if default is None:
        return
    expected = (int, float) if type(default) is float else type(default)
    if isinstance(value, bool) is not isinstance(default, bool) or not isinstance(value, expected):
        raise ValueError(f"{where}: expected {type(default).__name__}, got {value!r}")


def load_server_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Read ``path`` (default configs/server.yaml), then apply top-level overrides that are not None."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    values: dict[str, Any] = {}
    if path.exists():
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
    elif path != DEFAULT_CONFIG_PATH:
        raise FileNotFoundError(f"config file not found: {path}")
    config = _build(ServerConfig, values, str(path.name))
    for name, value in overrides.items():
        if value is None:
            continue
        if not hasattr(config, name):
            raise ValueError(f"unknown server option {name!r}")
        setattr(config, name, value)
    if not 0 <= config.port <= 65535:
        raise ValueError(f"port {config.port} is out of range (0..65535)")
    if config.sessions.max_sessions < 1:
        raise ValueError(f"max_sessions must be at least 1, got {config.sessions.max_sessions}")
    from live_avatar.server.webrtc.ice import rtc_configuration

    rtc_configuration(config.webrtc.ice_servers)  # checked now, not at the first offer
    return config
