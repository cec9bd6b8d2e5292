"""ServerConfig: configs/server.yaml loads, flags override, typos are errors."""

from __future__ import annotations

import pytest

from live_avatar.server.config import DEFAULT_CONFIG_PATH, ServerConfig, load_server_config


def test_repository_config_loads_with_its_defaults() -> None:
    config = load_server_config()
    assert DEFAULT_CONFIG_PATH.exists()
    assert config.host == "127.0.0.1" and config.port == 8080 and config.engine == "lite"
    assert config.webrtc.ice_servers == []  # no public STUN by default
    assert config.sessions.max_sessions >= 1


def test_flags_override_and_none_means_keep(tmp_path) -> None:
    config = load_server_config(None, host="0.0.0.0", port=9000, engine=None)
    assert (config.host, config.port, config.engine) == ("0.0.0.0", 9000, "lite")


def test_unknown_keys_are_refused(tmp_path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("sessions:\n  max_sesions: 3\n")
    with pytest.raises(ValueError, match="server.yaml: sessions: unknown key.s. max_sesions"):
        load_server_config(path)


def test_nested_values_are_read(tmp_path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("port: 9999\nsessions:\n  max_sessions: 7\nwebrtc:\n  ice_servers: [{urls: 'stun:x.org'}]\n")
    config = load_server_config(path)
    assert config.port == 9999 and config.sessions.max_sessions == 7
    assert config.webrtc.ice_servers == [{"urls": "stun:x.org"}]
    assert isinstance(config, ServerConfig)


def test_missing_config_file_is_an_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_server_config(tmp_path / "nope.yaml")


def test_serve_command_reports_a_bad_config_without_a_traceback(tmp_path, capsys) -> None:
    from live_avatar.cli.main import build_parser

    args = build_parser("serve").parse_args(["serve", "--config", str(tmp_path / "missing.yaml")])
    assert args._module.run(args) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port: [1\n", "not valid YAML"),
        ("port: abc\n", "server.yaml: port: expected an integer"),
        ("port: 99999\n", "out of range"),
        ("sessions: {max_sessions: 0}\n", "max_sessions must be at least 1"),
        ("webrtc: {ice_servers: stun}\n", "server.yaml: webrtc.ice_servers: expected a list"),
        ("webrtc: {ice_servers: ['stun:stun.example.org']}\n", "each ICE server needs 'urls'"),
    ],
)
def test_malformed_values_are_clear_errors(tmp_path, text, message) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_server_config(path)


def test_an_int_may_stand_for_a_float(tmp_path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("sessions: {playout_delay_ms: 60}\n")
    assert load_server_config(path).sessions.playout_delay_ms == 60


def test_serve_command_refuses_a_taken_port_and_a_missing_portrait_before_loading_the_engine(tmp_path, capsys, monkeypatch) -> None:
    import socket

    import live_avatar.core.engines
    from live_avatar.cli.main import build_parser

    def no_engine(*_args, **_kwargs):
        raise AssertionError("the engine must not be loaded")

    monkeypatch.setattr(live_avatar.core.engines, "load_engine", no_engine)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = build_parser("serve").parse_args(["serve", "--port", str(port)])
        assert args._module.run(args) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err

    args = build_parser("serve").parse_args(["serve", "--avatar", str(tmp_path / "missing.png")])
    assert args._module.run(args) == 2
    assert "no image file" in capsys.readouterr().err
