"""Engine registry: ``load_engine(name, **config)``. Engines are imported lazily (the GPU one is heavy)."""

from __future__ import annotations

import importlib
from typing import Any

from live_avatar.core.contract import Engine

ENGINES = {
    "lite": "live_avatar.core.engines.lite.engine:LiteEngine",
    "liveavatar": "live_avatar.core.engines.liveavatar.engine:LiveAvatarEngine",
}


def load_engine(name: str, **config: Any) -> Engine:
    try:
        target = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(sorted(ENGINES))}") from None
    module_name, class_name = target.split(":")
    engine_class = getattr(importlib.import_module(module_name), class_name)
    return engine_class(**config)
