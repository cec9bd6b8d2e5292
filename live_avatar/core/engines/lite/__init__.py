"""The lite engine: CPU talking portrait (face rig + audio-driven motion + mesh-warp renderer)."""

from live_avatar.core.engines.lite.config import LiteConfig, load_lite_config
from live_avatar.core.engines.lite.engine import LiteAvatar, LiteEngine, LiteGenerator

__all__ = ["LiteAvatar", "LiteConfig", "LiteEngine", "LiteGenerator", "load_lite_config"]
