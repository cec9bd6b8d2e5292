"""Cross-origin requests (DESIGN.md §4 "Exposure"): only the server's own page and the origins in
``cors.allow_origins`` may call the API from a browser.

A request with an ``Origin`` header that is neither the server's own origin (scheme://host:port of
the request's ``Host``) nor an allowed one is refused with 403, before anything else runs: a page
on another site cannot open sessions, upload portraits or read answers through a visitor's
browser. Allowed origins get CORS headers, and their preflights (``OPTIONS`` with
``Access-Control-Request-Method``) are answered here. Requests without ``Origin`` (curl, OBS,
aiortc peers, a browser's own navigation) are not cross-site requests and pass untouched.

Behind a TLS-terminating proxy the server sees ``http``; put the public ``https://`` origin in
``cors.allow_origins`` there.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from yarl import URL

ALLOWED_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
EXPOSED_HEADERS = "Location, X-Session-Id, Retry-After"  # WHIP's Location must be readable
PREFLIGHT_MAX_AGE_S = 600

Origin = tuple[str, str, int]  # (scheme, host, port), lower case, default port filled in


def parse_origin(text: str) -> Origin:
    """``scheme://host[:port]`` -> (scheme, host, port); ValueError for anything else."""
    try:
        url = URL(text.strip())
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/") or url.query_string or url.user:
        raise ValueError(f"{text!r} is not an origin: expected scheme://host[:port], e.g. https://app.example.org")
    return url.scheme, url.host.lower(), url.port


class OriginPolicy:
    def __init__(self, allow_origins: Iterable[str]) -> None:
        self._allowed = {parse_origin(o) for o in allow_origins}

    @staticmethod
    def own_origin(request: web.Request) -> Origin | None:
        try:
            return parse_origin(f"{request.scheme}://{request.host}")
        except ValueError:
            return None

    def allowed_cross_origin(self, origin: Origin) -> bool:
        return origin in self._allowed

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        header = request.headers.get("Origin")
        if header is None:
            return await handler(request)
        try:
            origin = parse_origin(header)
        except ValueError:
            origin = None
        if origin is not None and origin == self.own_origin(request):
            return await handler(request)
        if origin is None or not self.allowed_cross_origin(origin):
            return web.json_response(
                {"error": f"cross-origin requests from {header[:100]!r} are not allowed (the server's cors.allow_origins)"},
                status=403,
            )
        cors = {"Access-Control-Allow-Origin": header, "Access-Control-Expose-Headers": EXPOSED_HEADERS}
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(
                status=204,
                headers={
                    **cors,
                    "Access-Control-Allow-Methods": ALLOWED_METHODS,
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                    "Vary": "Origin",
                },
            )
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # an error answer raised further in: it carries the headers too
            exc.headers.update(cors)
            exc.headers.add("Vary", "Origin")
            raise
        if not response.prepared:
            response.headers.update(cors)
            response.headers.add("Vary", "Origin")
        return response


__all__ = ["OriginPolicy", "parse_origin"]
