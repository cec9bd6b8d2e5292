"""One way to read configuration (YAML files, option mappings) into dataclasses.

Every loader of the project (server, stream runtime, engines, presets) goes through
:func:`from_mapping`, so that a typo, a wrong type or an out-of-range value gives the same kind of
message, naming the file (or option set) and the key: ``server.yaml: sessions.max_sessions:
expected an integer, got 'four'``.

Rules, from the dataclass's type annotations: unknown keys are errors; ``int`` takes integers
(not booleans), ``float`` takes integers too, ``bool`` only booleans, ``str`` only strings; ``X |
None`` takes None; ``tuple[...]`` takes a list (YAML has no tuples); ``list[...]``/``dict[...]``
check the container; a nested dataclass takes a mapping; ``Literal[...]`` its values. A field whose
metadata holds ``parse`` (a callable) gets the raw value through it first. Range checks stay in the
dataclass's ``__post_init__``: a ``ValueError`` there is reported with the same prefix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message is user-facing."""

    def __init__(self, problem: str, source: str = "", key: str = "") -> None:
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}" if where else problem)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"must hold a mapping of key: value, got {type(data).__name__}", str(path))
    return data


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, source: str, prefix: str = "") -> T:
    """``cls(**values)`` with every key and value checked (see the module docstring)."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"expected a mapping, got {_describe(values)}", source, prefix)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", source, prefix)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        parse = known[name].metadata.get("parse")
        if parse is not None:
            try:
                value = parse(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc), source, key) from None
        kwargs[name] = _convert(value, hints[name], source, key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.source:
            raise
        raise ConfigError(exc.problem, source, exc.key or prefix) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), source, prefix) from None


def _convert(value: Any, annotation: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        problems = []
        for option in options:
            try:
                return _convert(value, option, source, key)
            except ConfigError as exc:
                problems.append(exc.problem)
        raise ConfigError(problems[0] if len(problems) == 1 else " or ".join(problems), source, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"must be one of {', '.join(map(repr, args))}, got {value!r}", source, key)
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return from_mapping(annotation, value, source, key)
    if annotation is bool:
        return _expect(value, isinstance(value, bool), "true or false", source, key)
    if annotation is int:
        return _expect(value, isinstance(value, int) and not isinstance(value, bool), "an integer", source, key)
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(_expect(value, ok, "a number", source, key))
    if annotation is str:
        return _expect(value, isinstance(value, str), "a string", source, key)
    if origin is tuple or annotation is tuple:
        _expect(value, isinstance(value, (list, tuple)), "a list", source, key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"expected {len(args)} values, got {len(value)}", source, key)
        return tuple(_convert(v, a, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))) if args else tuple(value)
    if origin is list or annotation is list:
        _expect(value, isinstance(value, (list, tuple)), "a list", source, key)
        return [_convert(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or annotation is dict:
        _expect(value, isinstance(value, Mapping), "a mapping", source, key)
        return dict(value)
    return value  # an annotation these rules do not cover: left to the dataclass


def _expect(value: Any, ok: bool, what: str, source: str, key: str) -> Any:
    if not ok:
        raise ConfigError(f"expected {what}, got {_describe(value)}", source, key)
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:57]}..."


def merge_mappings(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied, nested mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged
