"""Safe to expose, the pieces: token comparison, token sources and exposure, Origin parsing, the
upload rate window, portraits per owner, and the configuration keys (issue 13, points 1-3)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from aiohttp.test_utils import make_mocked_request

from live_avatar.core.portraits import PortraitLimits
from live_avatar.server import auth
from live_avatar.server.auth import (
    TokenSet,
    configure_access,
    is_loopback_host,
    presented_token,
)
from live_avatar.server.avatars import AvatarStore
from live_avatar.server.config import ServerConfig, load_server_config
from live_avatar.server.origins import OriginPolicy, parse_origin
from live_avatar.server.rate_limits import SlidingWindowLimit


# -- tokens ------------------------------------------------------------------------------------
def test_token_set_finds_the_token_and_nothing_else() -> None:
    tokens = TokenSet(["alpha-token", "beta"])
    assert tokens.match("alpha-token") == 0 and tokens.match("beta") == 1
    for wrong in ("alpha", "alpha-token ", "alpha-tokenX", "", "BETA", None):
        assert tokens.match(wrong) is None, wrong
    assert not TokenSet([]) and TokenSet([]).match("anything") is None


def test_every_token_is_compared_in_constant_time_whatever_matches(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    tokens = TokenSet(["first", "a-much-longer-second-token", "3"])
    for presented in ("first", "3", "nope", "a-much-longer-second-token-and-more"):
        calls.clear()
        tokens.match(presented)
        # no early exit, and the lengths compared are digests' (nothing about the token's length)
        assert calls == [(32, 32)] * 3, (presented, calls)


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({"Authorization": "Bearer abc"}, "", "abc"),
        ({"Authorization": "bearer  abc "}, "", "abc"),
        ({"Authorization": "Bearer abc"}, "?token=other", "abc"),  # the header decides
        ({}, "?token=xyz", "xyz"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "?token=xyz", "xyz"),  # a proxy's credentials: the query's token
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "", None),
        ({"Authorization": "Bearer"}, "?token=xyz", ""),  # an empty Bearer is a wrong token, not a missing one
        ({}, "", None),
    ],
)
def test_presented_token(headers, query, expected) -> None:
    assert presented_token(make_mocked_request("GET", f"/avatars{query}", headers=headers)) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True), ("LOCALHOST", True), ("127.0.0.2", True),
     ("0.0.0.0", False), ("", False), ("::", False), ("192.168.1.10", False), ("example.org", False)],
)
def test_loopback_hosts(host, loopback) -> None:
    assert is_loopback_host(host) is loopback


def test_token_sources_flag_then_environment_then_config() -> None:
    config = ServerConfig()
    config.auth.tokens = ["from-config"]
    setup = configure_access(config, ["flag-1", "flag-2"], False, {"AVATAR_TOKEN": "from-env"})
    assert config.auth.tokens == ["flag-1", "flag-2"] and setup.tokens_required and setup.generated_token is None

    config.auth.tokens = ["from-config"]
    configure_access(config, None, False, {"AVATAR_TOKEN": " from-env\n"})
    assert config.auth.tokens == ["from-env"]

    config.auth.tokens = ["from-config"]
    configure_access(config, None, False, {"AVATAR_TOKEN": ""})
    assert config.auth.tokens == ["from-config"]


def test_loopback_without_tokens_stays_open_and_says_nothing() -> None:
    config = ServerConfig(host="127.0.0.1", port=8080)
    setup = configure_access(config, None, False, {})
    assert config.auth.tokens == [] and setup.warning is None and setup.generated_token is None
    assert setup.page_urls == ["http://127.0.0.1:8080/"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_beyond_loopback_without_tokens_a_random_token_is_made_and_its_url_printed(host) -> None:
    config = ServerConfig(host=host, port=9000)
    setup = configure_access(config, None, False, {})
    token = setup.generated_token
    assert token and len(token) >= 32 and config.auth.tokens == [token]
    assert all(url.endswith(f":9000/?token={token}") for url in setup.page_urls)
    assert setup.warning is None
    assert configure_access(ServerConfig(host=host), None, False, {}).generated_token != token  # random each time
    if host == "192.168.1.10":
        assert setup.page_urls == [f"http://192.168.1.10:9000/?token={token}"]


def test_no_auth_runs_open_with_a_warning_and_contradicts_a_token_flag() -> None:
    config = ServerConfig(host="0.0.0.0", port=8080)
    config.auth.tokens = ["from-config"]
    setup = configure_access(config, None, True, {"AVATAR_TOKEN": "env"})
    assert config.auth.tokens == [] and setup.generated_token is None
    assert setup.warning and "WARNING" in setup.warning and "without an access token" in setup.warning
    assert configure_access(ServerConfig(host="127.0.0.1"), None, True, {}).warning is None  # nothing exposed
    with pytest.raises(ValueError, match="contradict"):
        configure_access(ServerConfig(host="0.0.0.0"), ["t"], True, {})


def test_malformed_tokens_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="printable ASCII") as err:
        configure_access(ServerConfig(), ["secret with space"], False, {})
    assert "secret" not in str(err.value)


def test_config_keys_load_and_are_checked(tmp_path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text(
        "auth: {tokens: [abc, def], metrics_open: true}\n"
        "cors: {allow_origins: ['https://app.example.org', 'http://localhost:3000/']}\n"
        "sessions: {connect_timeout_s: 2.5}\n"
        "limits: {max_sessions_per_client: 3, uploads_per_minute: 7}\n"
    )
    config = load_server_config(path)
    assert config.auth.tokens == ["abc", "def"] and config.auth.metrics_open is True
    assert config.cors.allow_origins == ["https://app.example.org", "http://localhost:3000/"]
    assert config.sessions.connect_timeout_s == 2.5
    assert (config.limits.max_sessions_per_client, config.limits.uploads_per_minute) == (3, 7)
    defaults = load_server_config()
    assert defaults.auth.tokens == [] and defaults.auth.metrics_open is False and defaults.cors.allow_origins == []
    assert defaults.sessions.connect_timeout_s == 5.0
    assert (defaults.limits.max_sessions_per_client, defaults.limits.uploads_per_minute) == (2, 10)
    for text, message in [
        ("auth: {tokens: abc}\n", "auth.tokens: expected a list"),
        ("auth: {tokens: ['']}\n", r"auth.tokens\[0\]"),
        ("cors: {allow_origins: ['app.example.org']}\n", r"cors.allow_origins\[0\]: 'app.example.org' is not an origin"),
        ("cors: {allow_origins: ['https://x.org/path']}\n", "is not an origin"),
        ("limits: {max_sessions_per_client: 0}\n", "limits.max_sessions_per_client: must be at least 1"),
        ("sessions: {connect_timeout_s: -1}\n", "sessions.connect_timeout_s: must be positive"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_server_config(path)


# -- origins -----------------------------------------------------------------------------------
def test_origins_are_compared_as_scheme_host_port() -> None:
    assert parse_origin("http://Example.org") == ("http", "example.org", 80)
    assert parse_origin("https://example.org:443") == parse_origin("https://example.org") == ("https", "example.org", 443)
    assert parse_origin("http://[::1]:8080") == ("http", "::1", 8080)
    for bad in ("null", "example.org", "ftp://example.org", "http://example.org/app", "http://u:p@example.org", ""):
        with pytest.raises(ValueError):
            parse_origin(bad)
    request = make_mocked_request("GET", "/", headers={"Host": "127.0.0.1:8080"})
    assert OriginPolicy.own_origin(request) == ("http", "127.0.0.1", 8080)
    policy = OriginPolicy(["https://app.example.org"])
    assert policy.allowed_cross_origin(parse_origin("https://app.example.org:443"))
    assert not policy.allowed_cross_origin(parse_origin("http://app.example.org"))


# -- upload rate -------------------------------------------------------------------------------
def test_sliding_window_limits_each_key_and_says_when_to_retry() -> None:
    now = [1000.0]
    limit = SlidingWindowLimit(3, window_s=60.0, clock=lambda: now[0])
    assert [limit.try_acquire("a") for _ in range(3)] == [None, None, None]
    now[0] += 20.0
    assert limit.try_acquire("a") == 40  # the first event leaves the window in 40 s
    assert limit.try_acquire("b") is None  # another client has its own window
    now[0] += 40.0
    assert limit.try_acquire("a") is None  # the refused attempt did not count
    now[0] += 1000.0
    for _ in range(SlidingWindowLimit.SWEEP_EVERY):
        limit.try_acquire("c")
    assert len(limit) == 1  # idle clients are forgotten


# -- portraits per owner -----------------------------------------------------------------------
class StubEngine:
    def prepare_avatar(self, image):
        return object()


def _png() -> bytes:
    ok, data = cv2.imencode(".png", np.full((96, 96, 3), 120, np.uint8))
    assert ok
    return data.tobytes()


async def test_uploads_belong_to_their_owner_and_are_evicted_per_owner() -> None:
    store = AvatarStore(StubEngine(), PortraitLimits(), max_avatars=2)
    await store.load_default(None)
    a1 = await store.add_upload(_png(), "a1.png", "alice")
    b_ids = [await store.add_upload(_png(), f"b{i}.png", "bob") for i in range(3)]

    assert [a["avatar_id"] for a in store.list("alice")] == ["default", a1]  # bob's uploads pushed out only bob's
    assert [a["avatar_id"] for a in store.list("bob")] == ["default", *b_ids[1:]]
    assert [a["avatar_id"] for a in store.list("carol")] == ["default"]
    assert [a["avatar_id"] for a in store.list(None)] == ["default"]
    assert store.get(a1, "alice") is not None
    for owner in ("bob", None, "carol"):
        with pytest.raises(KeyError):
            store.get(a1, owner)
    with pytest.raises(KeyError):
        store.get(b_ids[0], "bob")  # evicted
    assert store.get(None, "carol") is store.get("default", "bob")  # the default is shared

    # alice's own least recently used upload goes when she passes her limit
    a2 = await store.add_upload(_png(), "a2.png", "alice")
    store.get(a1, "alice")  # used: now a2 is the least recently used
    await store.add_upload(_png(), "a3.png", "alice")
    ids = [a["avatar_id"] for a in store.list("alice")]
    assert a1 in ids and a2 not in ids and len(ids) == 3
    assert len(store) == 4


async def test_the_store_is_bounded_in_all_and_frees_only_idle_owners() -> None:
    from live_avatar.server.avatars import StoreFull

    now = [0.0]
    store = AvatarStore(StubEngine(), PortraitLimits(), max_avatars=2, max_total=3, owner_idle_s=60.0, clock=lambda: now[0])
    a = await store.add_upload(_png(), "a.png", "alice")
    b = [await store.add_upload(_png(), f"b{i}.png", "bob") for i in range(2)]
    now[0] = 30.0
    with pytest.raises(StoreFull, match="keeps 3 uploaded portraits"):  # everyone active: refused, nobody evicted
        await store.add_upload(_png(), "c.png", "carol")
    assert len(store) == 3 and store.get(a, "alice") is not None  # alice is active again at t=30
    b2 = await store.add_upload(_png(), "b2.png", "bob")  # at her own bound an owner replaces her oldest
    assert [x["avatar_id"] for x in store.list("bob")] == [b[1], b2]  # (no default loaded here)
    now[0] = 95.0  # bob idle since t=30 (65 s), alice since t=30 too, carol never stored anything
    c = await store.add_upload(_png(), "c.png", "carol")
    assert store.get(c, "carol") is not None
    with pytest.raises(KeyError):
        store.get(b2, "bob")  # the idle owners' uploads went to make room
    assert len(store) == 1
