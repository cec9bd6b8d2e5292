"""``avatar bench e2e --server-log``: the server's log outlives the run's temporary folder, also when the
server fails to start (the case where it is needed most)."""

from __future__ import annotations

import argparse

import pytest

e2e = pytest.importorskip("bench.e2e")


def test_the_server_log_is_kept_when_the_server_fails_to_start(tmp_path, capsys):
    kept = tmp_path / "logs" / "server.log"
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    code = e2e.run(parser.parse_args(["--engine", "no-such-engine", "--duration", "30", "--rss-baseline", "5",
                                      "--start-timeout", "60", "--output", str(tmp_path / "out.json"),
                                      "--server-log", str(kept)]))
    assert code == 1 and not (tmp_path / "out.json").exists()
    assert kept.is_file() and "no-such-engine" in kept.read_text(errors="replace")
    assert f"server log kept: {kept}" in capsys.readouterr().out
