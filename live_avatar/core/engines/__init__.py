"""Engine registry: ``load_engine(name, **config)``. Engines are imported lazily (the GPU one is heavy).

An engine may need packages that the base install leaves out (``liveavatar``: torch and the
Hugging Face stack, the ``[liveavatar]`` extra). ``check_engine_available(name)`` says so in one
line, without importing anything, before the engine module is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from live_avatar.core.contract import Engine

ENGINES = {
    "lite": "live_avatar.core.engines.lite.engine:LiteEngine",
    "liveavatar": "live_avatar.core.engines.liveavatar.engine:LiveAvatarEngine",
}

# engine -> (extra, top-level modules that extra provides and the engine imports)
ENGINE_EXTRAS = {
    "liveavatar": ("liveavatar", ("torch", "transformers", "diffusers", "safetensors", "tokenizers", "ftfy")),
}

DISTRIBUTION = "live-avatar-server"


class EngineUnavailable(ValueError):
    """The engine's optional dependencies (its extra) are not installed.

    A ValueError, so that callers which turn engine option errors into a one-line message and
    exit status 2 (``avatar generate``, ``avatar serve``) treat it the same way.
    """


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a broken module in sys.modules
        return False


def _missing_message(name: str, extra: str, missing: list[str]) -> str:
    torch_hint = (
        "install torch 2.13 first, the build for this machine's GPU or CPU (see pytorch.org), then "
        if "torch" in missing
        else ""
    )
    return (
        f"{', '.join(missing)} not installed (the [{extra}] extra): "
        f"{torch_hint}pip install '{DISTRIBUTION}[{extra}]'"
    )


def check_engine_available(name: str) -> None:
    """Raise ValueError for an unknown engine, EngineUnavailable when its extra is not installed."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(sorted(ENGINES))}")
    if name in ENGINE_EXTRAS:
        extra, modules = ENGINE_EXTRAS[name]
        missing = [m for m in modules if not _installed(m)]
        if missing:
            raise EngineUnavailable(_missing_message(name, extra, missing))


def load_engine(name: str, **config: Any) -> Engine:
    check_engine_available(name)
    module_name, class_name = ENGINES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # found by find_spec but not importable after all (e.g. a dependency of the extra is missing)
        extra, modules = ENGINE_EXTRAS.get(name, (None, ()))
        top = (exc.name or "").split(".")[0]
        if extra is None or top not in modules:
            raise
        raise EngineUnavailable(_missing_message(name, extra, [top])) from None
    return getattr(module, class_name)(**config)
