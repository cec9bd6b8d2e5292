"""``avatar serve`` and access tokens, as started from the command line (issue 13, point 1):
``--token`` (repeatable) and ``AVATAR_TOKEN``; bound beyond loopback without a token, the server
makes one and prints the page URL that carries it; ``--no-auth`` runs open, with a warning."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.loopback_peer import LoopbackPeer
from tests.support.server_process import REPO_ROOT, ServerProcess, http_json

pytestmark = pytest.mark.slow

FLAG_TOKENS = ("flag-token-1", "flag-token-2")
ENV_TOKEN = "env-token-xyz"
PRINTED_URL = re.compile(r"http://[^\s/]+:(\d+)/\?token=([A-Za-z0-9_-]+)")


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AVATAR_TOKEN"}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Four servers, started side by side: --token twice (AVATAR_TOKEN set too: the flags win);
    AVATAR_TOKEN on 0.0.0.0; 0.0.0.0 without a token; 0.0.0.0 with --no-auth."""
    log_dir = tmp_path_factory.mktemp("serve-access")
    specs = {
        "flags": (["--token", FLAG_TOKENS[0], "--token", FLAG_TOKENS[1]], environment(AVATAR_TOKEN=ENV_TOKEN)),
        "env": (["--host", "0.0.0.0"], environment(AVATAR_TOKEN=ENV_TOKEN)),
        "random": (["--host", "0.0.0.0"], environment()),
        "open": (["--host", "0.0.0.0", "--no-auth"], environment()),
    }
    processes = {name: ServerProcess(args, log_dir / f"{name}.log", start_timeout_s=180, env=env) for name, (args, env) in specs.items()}
    try:
        with ThreadPoolExecutor(len(processes)) as pool:
            for started in [pool.submit(p.start) for p in processes.values()]:
                started.result()
        yield processes
    finally:
        for process in processes.values():
            process.stop()


def api_statuses(url: str, headers: dict | None = None) -> dict[str, int]:
    """The status of one request to each kind of API route (bodies that get past auth are refused later)."""
    return {
        path: http_json(method, f"{url}{path}", body, headers=headers)[0]
        for method, path, body in [
            ("POST", "/offer", {"sdp": "x", "type": "offer"}),
            ("POST", "/whip", None),
            ("DELETE", "/whip/nope", None),
            ("GET", "/avatars", None),
            ("GET", "/sessions/nope/stats", None),
            ("POST", "/sessions/nope/interrupt", None),
            ("DELETE", "/sessions/nope", None),
            ("GET", "/metrics", None),
        ]
    }


def assert_refused(url: str, headers: dict | None = None) -> None:
    statuses = api_statuses(url, headers)
    assert set(statuses.values()) == {401}, statuses
    status, body = http_json("POST", f"{url}/offer", {"sdp": "x", "type": "offer"}, headers=headers)
    assert isinstance(body, dict) and "access token" in body["error"], body


def assert_let_through(url: str, headers: dict | None = None) -> None:
    statuses = api_statuses(url, headers)
    assert 401 not in statuses.values(), statuses
    assert statuses["/avatars"] == 200 and statuses["/metrics"] == 200 and statuses["/offer"] == 400, statuses
    for path in ("/", "/app.js", "/healthz"):  # the page and health stay open
        assert http_json("GET", f"{url}{path}")[0] == 200, path


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_flags_protect_every_api_route_and_with_one_everything_works(servers, speech_with_silence_wav) -> None:
    server = servers["flags"]
    assert_refused(server.url)
    assert_refused(server.url, bearer(ENV_TOKEN))  # --token replaces AVATAR_TOKEN
    assert_refused(server.url, bearer("flag-token"))
    for token in FLAG_TOKENS:
        assert_let_through(server.url, bearer(token))
    assert http_json("GET", f"{server.url}/avatars?token={FLAG_TOKENS[1]}")[0] == 200

    async def stream_one_session() -> int:
        peer = LoopbackPeer.from_wav(speech_with_silence_wav, frame_format=None, http_headers=bearer(FLAG_TOKENS[0]))
        try:
            await peer.connect_offer(server.url)
            await asyncio.wait_for(peer.connected.wait(), 20)
            for _ in range(100):
                if len(peer.video_frames) >= 25:
                    break
                await asyncio.sleep(0.1)
            assert await peer.delete_session() == 200
            return len(peer.video_frames)
        finally:
            await peer.close()

    assert asyncio.run(stream_one_session()) >= 25
    log = server.log_tail(20_000)
    assert "access token" in log and FLAG_TOKENS[0] not in log  # said, never printed


def test_the_environment_token_protects_a_server_bound_beyond_loopback(servers) -> None:
    server = servers["env"]
    assert_refused(server.url)
    assert_let_through(server.url, bearer(ENV_TOKEN))
    log = server.log_tail(20_000)
    assert not PRINTED_URL.search(log) and ENV_TOKEN not in log  # no token made, the given one not printed


def test_beyond_loopback_without_a_token_the_server_makes_one_and_prints_its_url(servers) -> None:
    server = servers["random"]
    printed = PRINTED_URL.findall(server.log_tail(20_000))
    assert printed, server.log_tail()
    ports, tokens = {int(p) for p, _ in printed}, {t for _, t in printed}
    assert ports == {server.port} and len(tokens) == 1, printed
    token = tokens.pop()
    assert len(token) >= 32
    assert_refused(server.url)
    assert_let_through(server.url, bearer(token))
    assert http_json("GET", f"{server.url}/avatars?token={token}")[0] == 200  # the printed URL's way


def test_no_auth_runs_open_and_says_so(servers) -> None:
    server = servers["open"]
    log = server.log_tail(20_000)
    assert "WARNING" in log and "--no-auth" in log and "?token=" not in log, log
    assert_let_through(server.url)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--no-auth", "--token", "abc"], "contradict"), (["--token", "has space"], "printable ASCII")],
)
def test_contradictory_or_malformed_token_options_are_refused_at_once(args, message) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "live_avatar.cli.main", "serve", "--port", "0", *args],
        cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr, (result.returncode, result.stderr)
    assert "has space" not in result.stderr and "Traceback" not in result.stderr
