"""The lite engine: CPU talking portrait (face rig + audio-driven motion + mesh-warp renderer)."""

from avatar_core.engines.lite.config import LiteConfig, load_lite_config
from avatar_core.engines.lite.engine import LiteAvatar, LiteEngine, LiteGenerator

__all__ = ["LiteAvatar", "LiteConfig", "LiteEngine", "LiteGenerator", "load_lite_config"]
