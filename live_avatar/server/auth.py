"""Who is asking, and may they (DESIGN.md §4 "Exposure").

Tokens. With access tokens configured (``auth.tokens``, ``avatar serve --token``, ``AVATAR_TOKEN``)
every route needs ``Authorization: Bearer TOKEN`` except the ones registered as open: the page,
its static files, ``/healthz`` (and ``/metrics`` with ``auth.metrics_open``). WHIP follows RFC 9725
(the Bearer token on POST /whip and on DELETE of the resource). Where a client cannot add a header
(a WebSocket, a page a browser opens) ``?token=TOKEN`` is accepted instead; a request that carries
a Bearer header is judged by that token alone. A missing or wrong token gets 401 JSON
with ``WWW-Authenticate: Bearer``. The presented token is compared, as a SHA-256 digest and with
``hmac.compare_digest``, against every configured token, so the time taken tells neither which
token nor how much of one matched.

Callers. Every request that passes gets a ``Caller``: ``client`` (what per-client limits count: the
token, else the remote address) and ``owner`` (whose uploaded portraits it may see and use: the
token, else the browser session, an HttpOnly SameSite=Strict cookie the server sets on the first API
request that lacks it).

Exposure. ``configure_access`` settles the tokens of ``avatar serve``: bound beyond loopback with
none configured, the server makes one and prints the page URL that carries it (as Jupyter does),
unless ``--no-auth`` says to run open, which is announced with a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource

TOKEN_ENV = "AVATAR_TOKEN"
OWNER_COOKIE = "avatar_owner"
_COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{22,64}$")  # what secrets.token_urlsafe makes
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenSet:
    """The configured access tokens, kept as digests."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(t) for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def match(self, presented: str | None) -> int | None:
        """The index of the configured token ``presented`` is, or None. Every token is compared,
        whatever the outcome, in time that does not depend on where they differ."""
        if presented is None:
            return None
        candidate = _digest(presented)
        found = -1
        for index, digest in enumerate(self._digests):
            same = hmac.compare_digest(candidate, digest)
            found = index if same else found
        return found if found >= 0 else None


def presented_token(request: web.Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer TOKEN``, else ``?token=TOKEN`` (also
    next to another kind of Authorization, e.g. a proxy's Basic credentials)."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    return request.query.get("token")


def unauthorized(presented: bool) -> web.Response:
    if presented:
        message = "wrong access token"
        challenge = 'Bearer realm="live-avatar", error="invalid_token"'
    else:
        message = "this server needs an access token: send Authorization: Bearer TOKEN (or ?token=TOKEN)"
        challenge = 'Bearer realm="live-avatar"'
    return web.json_response({"error": message}, status=401, headers={"WWW-Authenticate": challenge})


@dataclass(frozen=True)
class Caller:
    client: str  # per-client limits: "token:N" or "address:IP"
    owner: str  # private portraits: "token:N" or "browser:COOKIE"


CALLER = web.RequestKey("caller", Caller)


def caller_of(request: web.Request) -> Caller:
    return request[CALLER]


class AccessGuard:
    """The access middleware: checks the token (unless the route is open) and names the caller."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens = TokenSet(tokens)
        self._open: set[AbstractResource] = set()

    def open_to_all(self, resource: AbstractResource) -> None:
        """Let every request use ``resource`` (all its methods) without a token."""
        self._open.add(resource)

    def is_open(self, request: web.Request) -> bool:
        resource = request.match_info.route.resource
        return resource is not None and resource in self._open

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        open_route = self.is_open(request)
        token_index = None
        if self.tokens:
            presented = presented_token(request)
            token_index = self.tokens.match(presented)
            if token_index is None and not open_route:
                return unauthorized(presented is not None)
        new_cookie = None
        if token_index is not None:
            request[CALLER] = Caller(client=f"token:{token_index}", owner=f"token:{token_index}")
        else:
            cookie = request.cookies.get(OWNER_COOKIE, "")
            if not _COOKIE_VALUE.match(cookie):
                cookie = new_cookie = secrets.token_urlsafe(24)
            request[CALLER] = Caller(client=f"address:{request.remote}", owner=f"browser:{cookie}")
        response = await handler(request)
        # the page itself sets no cookie: a visit through a link from another site (which does
        # not carry a Strict cookie) must not replace the browser session its own requests carry
        if new_cookie is not None and not open_route and not self.tokens and not response.prepared:
            response.set_cookie(OWNER_COOKIE, new_cookie, path="/", httponly=True, samesite="Strict", secure=request.secure)
        return response


# -- exposure (avatar serve) -------------------------------------------------------------------
def is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def page_urls(host: str, port: int, token: str | None = None) -> list[str]:
    """The page's URL(s) for a listening address; a wildcard address gives this machine's name and loopback."""
    hosts = [socket.gethostname(), "127.0.0.1"] if host in WILDCARD_HOSTS else [host]
    query = f"?token={token}" if token else ""
    return [f"http://{f'[{h}]' if ':' in h else h}:{port}/{query}" for h in hosts]


@dataclass
class AccessSetup:
    """What ``configure_access`` decided: the URLs to print and a warning, if any."""

    page_urls: list[str] = field(default_factory=list)  # carry the token when the server made it
    generated_token: str | None = None
    warning: str | None = None
    tokens_required: bool = False


def configure_access(config, flag_tokens: list[str] | None, no_auth: bool, environ: Mapping[str, str]) -> AccessSetup:
    """Settle ``config.auth.tokens`` for ``avatar serve``: the ``--token`` flags, else
    ``AVATAR_TOKEN``, else the configured list; none of them and bound beyond loopback, a random
    token, unless ``no_auth``. Raises ValueError for contradictory or malformed options."""
    from live_avatar.server.config import AuthConfig

    if no_auth and flag_tokens:
        raise ValueError("--no-auth and --token contradict each other")
    if no_auth:
        tokens: list[str] = []
    elif flag_tokens:
        tokens = list(flag_tokens)
    elif environ.get(TOKEN_ENV, "").strip():
        tokens = [environ[TOKEN_ENV].strip()]
    else:
        tokens = list(config.auth.tokens)
    try:
        AuthConfig(tokens=tokens)  # the same checks as the config file's tokens
    except ValueError as exc:
        raise ValueError(f"access token: {exc}") from None
    setup = AccessSetup()
    exposed = not is_loopback_host(config.host)
    if not tokens and exposed and not no_auth:
        setup.generated_token = secrets.token_urlsafe(24)
        tokens = [setup.generated_token]
    if not tokens and exposed:
        setup.warning = (
            f"WARNING: --no-auth: listening on {config.host or '*'}:{config.port} without an access token; "
            "anyone who can reach this address can use the server"
        )
    config.auth.tokens = tokens
    setup.tokens_required = bool(tokens)
    setup.page_urls = page_urls(config.host, config.port, setup.generated_token)
    return setup


__all__ = [
    "CALLER",
    "OWNER_COOKIE",
    "TOKEN_ENV",
    "AccessGuard",
    "AccessSetup",
    "Caller",
    "TokenSet",
    "caller_of",
    "configure_access",
    "is_loopback_host",
    "page_urls",
    "presented_token",
]
