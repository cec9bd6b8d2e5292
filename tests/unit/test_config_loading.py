"""The one configuration reader: every loader reports mistakes as 'SOURCE: KEY: problem'."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from live_avatar.core.config_loading import ConfigError, from_mapping, merge_mappings, read_yaml_mapping


@dataclass
class Inner:
    rate: float = 1.0
    band: tuple[float, float] = (80.0, 4000.0)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")


@dataclass
class Outer:
    name: str = "x"
    count: int = 1
    enabled: bool = False
    limit: int | None = None
    layers: tuple[int, ...] = (0, 1)
    hosts: list[str] = field(default_factory=list)
    mode: Literal["fast", "slow"] = "fast"
    inner: Inner = field(default_factory=Inner)


def test_values_are_converted_and_defaults_kept():
    config = from_mapping(Outer, {"count": 3, "layers": [4, 5, 6], "inner": {"rate": 2, "band": [1, 2]}}, "t.yaml")
    assert config.count == 3 and config.layers == (4, 5, 6) and config.hosts == []
    assert config.inner.rate == 2.0 and isinstance(config.inner.rate, float) and config.inner.band == (1.0, 2.0)
    assert from_mapping(Outer, None, "t.yaml") == Outer()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cuont": 3}, "t.yaml: unknown key(s) cuont; known: "),
        ({"inner": {"rte": 1}}, "t.yaml: inner: unknown key(s) rte"),
        ({"count": "3"}, "t.yaml: count: expected an integer, got '3'"),
        ({"count": True}, "t.yaml: count: expected an integer, got True"),
        ({"enabled": "yes"}, "t.yaml: enabled: expected true or false, got 'yes'"),
        ({"limit": 2.5}, "t.yaml: limit: expected an integer, got 2.5"),
        ({"layers": [1, "a"]}, "t.yaml: layers[1]: expected an integer, got 'a'"),
        ({"hosts": "a"}, "t.yaml: hosts: expected a list, got 'a'"),
        ({"mode": "medium"}, "t.yaml: mode: must be one of 'fast', 'slow', got 'medium'"),
        ({"inner": 3}, "t.yaml: inner: expected a mapping, got 3"),
        ({"inner": {"band": [1, 2, 3]}}, "t.yaml: inner.band: expected 2 values, got 3"),
        ({"inner": {"rate": -1}}, "t.yaml: inner: rate must be > 0, got -1.0"),
    ],
)
def test_mistakes_name_the_source_and_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        from_mapping(Outer, values, "t.yaml")
    assert str(info.value).startswith(message), str(info.value)


def test_yaml_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("count: 2\n")
    assert read_yaml_mapping(good) == {"count": 2}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}
    for text, message in (("count: [1\n", "not valid YAML"), ("- a\n", "must hold a mapping")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=f"bad.yaml: {message}"):
            read_yaml_mapping(bad)
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        read_yaml_mapping(tmp_path / "missing.yaml")


def test_merge_is_recursive():
    assert merge_mappings({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}, "d": 1}


def test_every_loader_uses_the_same_style(tmp_path):
    from live_avatar.core.engines.lite.config import load_lite_config
    from live_avatar.core.presets import PresetError, load_preset
    from live_avatar.core.stream import StreamConfig
    from live_avatar.server.config import load_server_config

    server = tmp_path / "server.yaml"
    server.write_text("sessions: {max_sessions: many}\n")
    with pytest.raises(ValueError, match=r"server.yaml: sessions.max_sessions: expected an integer, got 'many'"):
        load_server_config(server)
    lite = tmp_path / "lite.yaml"
    lite.write_text("motion: {attack_ms: fast}\n")
    with pytest.raises(ValueError, match=r"lite.yaml: motion.attack_ms: expected a number, got 'fast'"):
        load_lite_config(path=lite)
    (tmp_path / "odd.yaml").write_text("num_clip: lots\n")
    with pytest.raises(PresetError, match=r"odd.yaml: num_clip: expected an integer, got 'lots'"):
        load_preset("odd", tmp_path)
    with pytest.raises(ValueError, match=r"stream options: vad.snr_db: expected a number"):
        StreamConfig.from_dict({"vad": {"snr_db": "high"}})
