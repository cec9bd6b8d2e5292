"""ServerConfig: the server's settings, loaded from configs/server.yaml and overridden by flags."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from live_avatar.core.config_loading import ConfigError, from_mapping, read_yaml_mapping
from live_avatar.resources import config_path
from live_avatar.server.capacity import CapacityConfig

DEFAULT_CONFIG_PATH = config_path("server.yaml")


@dataclass
class SessionConfig:
    max_sessions: int = 4
    playout_delay_ms: float = 40.0  # at the start; then the margin follows the jitter (adaptive_margin)
    adaptive_margin: bool = True
    min_margin_ms: float = 30.0  # the low tail (2 %) of the frames' slack is kept near this (see server.yaml)
    max_buffered_frames: int = 50
    consumer_queue_slots: int = 4
    idle_timeout_s: float = 15.0
    connect_timeout_s: float = 5.0  # ICE and DTLS must connect within this, else the session ends

    def __post_init__(self) -> None:
        if not self.connect_timeout_s > 0:
            raise ConfigError(f"must be positive, got {self.connect_timeout_s}", key="sessions.connect_timeout_s")


@dataclass
class WebRTCConfig:
    ice_host_addresses: list[str] = field(default_factory=list)
    ice_servers: list[Any] = field(default_factory=list)  # entries: checked by rtc_configuration, which says what one needs
    audio_jitter_prefetch: int = 0  # 0: each packet to the decoder at once (aiortc_hooks)


@dataclass
class LimitsConfig:
    max_sdp_bytes: int = 64 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_avatars: int = 32  # per owner
    max_avatars_total: int = 256  # all owners; when full, idle owners' uploads go (else 503)
    avatar_owner_idle_s: float = 3600.0
    max_sessions_per_client: int = 2
    uploads_per_minute: int = 10

    def __post_init__(self) -> None:
        for name in ("max_avatars", "max_avatars_total", "max_sessions_per_client", "uploads_per_minute"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", key=f"limits.{name}")


@dataclass
class AuthConfig:
    tokens: list[str] = field(default_factory=list)  # empty: no token needed (see avatar serve for exposure)
    metrics_open: bool = False  # True: /metrics needs no token

    def __post_init__(self) -> None:
        for i, token in enumerate(self.tokens):
            if not token or any(not 0x21 <= ord(c) <= 0x7E for c in token):
                raise ConfigError("a token must be printable ASCII without spaces, at least one character", key=f"auth.tokens[{i}]")


@dataclass
class CorsConfig:
    allow_origins: list[str] = field(default_factory=list)  # e.g. https://app.example.org

    def __post_init__(self) -> None:
        from live_avatar.server.origins import parse_origin

        for i, origin in enumerate(self.allow_origins):
            try:
                parse_origin(origin)
            except ValueError as exc:
                raise ConfigError(str(exc), key=f"cors.allow_origins[{i}]") from None


@dataclass
class AudioSocketConfig:
    """Sessions driven by pushed speech (POST /sessions, GET /sessions/{id}/audio): speech_input.py."""

    max_buffered_s: float = 60.0  # pushed speech waiting to be played; beyond it a message is refused (error event)
    position_interval_s: float = 0.25  # playback_position events while speaking
    idle_timeout_s: float = 60.0  # a POST /sessions session with no audio WebSocket this long ends
    max_message_bytes: int = 4 * 1024 * 1024  # one WebSocket message (a larger one closes the socket: 1009)
    heartbeat_s: float = 20.0  # WebSocket ping interval; a peer that stops answering is dropped

    def __post_init__(self) -> None:
        for name in ("max_buffered_s", "position_interval_s", "idle_timeout_s", "heartbeat_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be positive, got {getattr(self, name)}", key=f"audio_socket.{name}")
        if self.position_interval_s > 0.5:
            raise ConfigError("must be at most 0.5 (the protocol promises a position every 0.5 s)", key="audio_socket.position_interval_s")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"must be at least 1024, got {self.max_message_bytes}", key="audio_socket.max_message_bytes")


@dataclass
class OutputsConfig:
    """WHEP viewers, RTMP/SRT pushes, recordings, virtual cameras (server/outputs/)."""

    recordings_dir: str = "recordings"  # where recordings go (relative: to the working directory)
    max_viewers_per_session: int = 8
    max_outputs_per_session: int = 4  # pushes, recordings and cameras running at once
    video_bitrate: int = 2_000_000
    audio_bitrate: int = 128_000
    keyframe_interval_s: float = 2.0
    x264_preset: str = "veryfast"
    reconnect_initial_s: float = 1.0  # first wait before a push reconnects; doubles up to reconnect_max_s
    reconnect_max_s: float = 10.0
    io_timeout_s: float = 5.0  # SRT connect/IO timeout; an RTMP push whose write blocks this long is reported "stalled"

    def __post_init__(self) -> None:
        for name in ("max_viewers_per_session", "max_outputs_per_session", "video_bitrate", "audio_bitrate"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be at least 1, got {getattr(self, name)}", key=f"outputs.{name}")
        for name in ("keyframe_interval_s", "reconnect_initial_s", "reconnect_max_s", "io_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be positive, got {getattr(self, name)}", key=f"outputs.{name}")


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
    auth: AuthConfig = field(default_factory=AuthConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    audio_socket: AudioSocketConfig = field(default_factory=AudioSocketConfig)
    outputs: OutputsConfig = field(default_factory=OutputsConfig)
    capacity: CapacityConfig = field(default_factory=CapacityConfig)

    def ice_host_addresses(self) -> list[str] | None:
        """Addresses to offer as host candidates; None means every non-loopback interface."""
        if self.webrtc.ice_host_addresses:
            return list(self.webrtc.ice_host_addresses)
        if self.host in ("", "0.0.0.0", "::"):
            return None
        if self.host == "localhost":
            return ["127.0.0.1"]
        return [self.host]


def load_server_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Read ``path`` (default: the packaged server.yaml), then apply top-level overrides that are not None."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.exists() and path != DEFAULT_CONFIG_PATH:
        raise FileNotFoundError(f"config file not found: {path}")
    values = read_yaml_mapping(path) if path.exists() else {}
    unknown = sorted(name for name in overrides if name not in {f.name for f in fields(ServerConfig)})
    if unknown:
        raise ValueError(f"unknown server option(s) {', '.join(unknown)}")
    flags = {name: value for name, value in overrides.items() if value is not None}
    config = from_mapping(ServerConfig, {**values, **flags}, str(path))
    if not 0 <= config.port <= 65535:
        raise ConfigError(f"{config.port} is out of range (0..65535)", str(path), "port")
    if config.sessions.max_sessions < 1:
        raise ConfigError(f"max_sessions must be at least 1, got {config.sessions.max_sessions}", str(path), "sessions.max_sessions")
    from live_avatar.server.webrtc.ice import rtc_configuration

    try:
        rtc_configuration(config.webrtc.ice_servers)  # checked now, not at the first offer
    except ValueError as exc:
        raise ConfigError(str(exc), str(path), "webrtc.ice_servers") from None
    return config
