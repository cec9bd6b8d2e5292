"""Paths of the data shipped inside the package (YAML configs, the browser page).

Read through importlib.resources so that a wheel installed anywhere finds them; the package is
installed as plain files (no zip import), so each resource is a real path on disk.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_path(*parts: str) -> Path:
    """Path of ``live_avatar/<parts...>`` as installed."""
    return Path(str(files("live_avatar").joinpath(*parts)))


def config_path(*parts: str) -> Path:
    """A file under ``live_avatar/configs/``, e.g. ``config_path("engines", "lite.yaml")``."""
    return package_path("configs", *parts)


CLIENT_DIR = package_path("client")
