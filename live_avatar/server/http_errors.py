"""Every error leaves the server as JSON ``{"error": "..."}``, aiohttp's own included.

Two layers produce errors:

- **Handlers and routing** (404, 405, 413, a broken body, a bug): the ``json_errors`` middleware.
- **aiohttp's HTTP parser**, before any middleware runs: a request line over 8 KiB, a header that is
  too long or malformed, too many headers, a bad Content-Length or chunked body, something that is
  not HTTP at all. aiohttp answers these from ``RequestHandler.handle_error`` with a plain-text 400
  that quotes the parser's internals, and logs a traceback for each. aiohttp has no option for this
  (aio-libs/aiohttp#3287 is open since 2018), so ``install_json_http_errors(app)`` hooks in with as
  little private API as possible (see there): ``JsonErrorRequestHandler.handle_error`` answers with
  the right status (400, 414, 431), a message that says what is wrong, and logs one line.

Client errors are logged as one line at most, never with a traceback; only server bugs (500) are.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from http import HTTPStatus
from importlib.metadata import version
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentEncodingError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal server error (see the server log)"
# aiohttp's default limit is 8190 bytes for both the request line (its URL, with the C parser) and a
# header. The request line gets 8 KiB (8192) instead, so that the parser's LineTooLong, which only
# carries the limit it hit, tells a long URL (414) from a long header (431).
MAX_REQUEST_LINE = 8192
MAX_HEADER_FIELD = 8190
# aiohttp major.minor range the hook below was checked with (RequestHandler.handle_error, web.Server,
# Application._make_handler)
TESTED_AIOHTTP = ((3, 14), (3, 14))
_SHOWN_PATH = 200  # characters of a request path quoted back in a 404/405 message


def error_response(status: int, message: str, headers: Any = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


# ------------------------------------------------------------------------------------ messages


def _quoted_path(request: web.BaseRequest) -> str:
    path = request.path
    return path if len(path) <= _SHOWN_PATH else path[:_SHOWN_PATH] + "..."


def describe_http_exception(request: web.BaseRequest, exc: web.HTTPException) -> str:
    """The user-facing text of an aiohttp HTTPException: its own text when a handler gave one, else
    a sentence for aiohttp's defaults (``"404: Not Found"`` says nothing the status does not)."""
    default_text = f"{exc.status}: {exc.reason}"
    text = (exc.text or "").strip()
    if text and text != default_text:
        if isinstance(exc, web.HTTPRequestEntityTooLarge) and text.startswith("Maximum request body size"):
            size = text.split("size", 1)[1].split()[0]
            return f"the request body is too large (more than {size} bytes)"
        return text
    if exc.status == 404:
        return f"nothing here: {request.method} {_quoted_path(request)} is not a page or API of this server"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"{request.method} is not allowed on {_quoted_path(request)}" + (f"; use {allowed}" if allowed else "")
    return exc.reason.lower() if exc.reason else HTTPStatus(exc.status).phrase.lower()


def describe_parse_error(
    exc: HttpProcessingError, *, max_line_size: int = MAX_REQUEST_LINE, max_field_size: int = MAX_HEADER_FIELD,
    max_headers: int = 128, where: str = "request",
) -> tuple[int, str]:
    """(status, message) for one of aiohttp's HTTP parser errors, without the parser's internals.

    ``where`` names what was parsed: "request" for the HTTP request itself, "multipart part" for the
    headers of a part of a multipart body (the same parser reads those)."""
    detail = (exc.message or "").lower() if isinstance(exc.message, str) else ""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if where == "request" and limit == max_line_size and max_line_size != max_field_size:
            return 414, f"the request line is too long: its URL must be at most {max_line_size} bytes"
        if limit == max_field_size:
            return 431, f"a {where} header is too long (more than {max_field_size} bytes)"
        return 431, f"the {where} line or a {where} header is too long"
    if "too many headers" in detail:
        return 431, f"the {where} has too many headers (at most {max_headers})"
    if isinstance(exc, BadHttpMethod):
        if "https" in detail:
            return 400, "this port speaks plain HTTP, not HTTPS: use an http:// URL"
        return 400, "the request does not start with an HTTP method: expected 'METHOD /path HTTP/1.1'"
    if isinstance(exc, BadStatusLine) or "after version" in detail:
        return 400, "the request line is malformed: expected 'METHOD /path HTTP/1.1'"
    if isinstance(exc, InvalidURLError):
        return 400, "the request URL is malformed"
    if "content-length" in detail and "transfer-encoding" in detail:
        return 400, "the request has both Content-Length and Transfer-Encoding: send one of them"
    if "content-length" in detail:
        return 400, "the Content-Length header is invalid: it must be a single decimal number of bytes"
    if "transfer-encoding" in detail or "transfer encoding" in detail:
        return 400, "the Transfer-Encoding header is invalid (only 'chunked' is supported, once, last)"
    if "chunk" in detail:
        return 400, "the chunked request body is malformed"
    if "host" in detail and "missing" in detail:
        return 400, "the request has no Host header (HTTP/1.1 requires one)"
    duplicate = re.match(r"duplicate '([\w-]+)' header", detail)
    if duplicate:
        return 400, f"the {where} has more than one {duplicate.group(1)} header"
    if isinstance(exc, ContentEncodingError):
        return 400, "the request body could not be decoded with its Content-Encoding"
    if isinstance(exc, PayloadEncodingError):
        return 400, "the request body is malformed or incomplete"
    if isinstance(exc, InvalidHeader) or "header" in detail:
        return 400, f"a {where} header is malformed"
    return 400, f"the {where} is not valid HTTP" if where == "request" else f"the {where} is malformed"


# what aiohttp's multipart reader says (lower case) -> what the client is told
_MULTIPART_ERRORS = (
    ("boundary missed", "the Content-Type has no boundary parameter"),
    ("too long (70 chars max)", "the boundary is longer than 70 characters"),
    ("boundary should contain ascii", "the boundary has characters a boundary cannot have"),
    ("boundary value contains invalid", "the boundary has characters a boundary cannot have"),
    ("could not find starting boundary", "the body does not contain the boundary given in its Content-Type"),
    ("invalid boundary", "a part is not followed by the boundary"),
    ("did not read all the data", "a part is not followed by the boundary, or the body ends inside a part"),
    ("reading after eof", "the body ends inside a part, before the closing boundary"),
    ("invalid content-length", "a part has an invalid Content-Length"),
    ("invalid default charset", "the _charset_ field does not hold a charset name"),
)


def describe_multipart_error(exc: Exception) -> str:
    """The user-facing message for an error of aiohttp's multipart reader."""
    if isinstance(exc, HttpProcessingError):
        _, reason = describe_parse_error(exc, where="multipart part")
    else:
        detail = str(exc).lower()
        reason = next((text for key, text in _MULTIPART_ERRORS if key in detail), "the body is malformed")
    return f"the upload is not valid multipart/form-data: {reason}"


# ---------------------------------------------------------------------------------- middleware


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every error a handler or the router raises leaves as JSON {"error": ...}; unexpected ones are
    logged with their traceback and answered with a generic 500, never shown raw."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        allow = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return error_response(exc.status, describe_http_exception(request, exc), headers=allow)
    except asyncio.CancelledError:
        raise
    except web.RequestPayloadError:  # the body broke off or its chunked/compressed framing is wrong
        log.warning("%s %s from %s: the request body is malformed or incomplete", request.method, request.path, request.remote)
        return error_response(400, "the request body is malformed or incomplete")
    except HttpProcessingError as exc:  # aiohttp's parser reading part of a body (e.g. multipart headers)
        status, message = describe_parse_error(exc, max_field_size=request.protocol.max_field_size,
                                               max_headers=request.protocol.max_headers, where="body part")
        log.warning("%s %s from %s: %d %s", request.method, request.path, request.remote, status, message)
        return error_response(status, message)
    except ConnectionResetError:
        if request.transport is None or request.transport.is_closing():
            # the client went away while its body was read: nobody to answer, nothing went wrong here
            log.info("%s %s: the client disconnected before its request was read", request.method, request.path)
            return error_response(400, "the connection closed before the request body was complete")
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, INTERNAL_ERROR)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, INTERNAL_ERROR)


# ------------------------------------------------------- aiohttp's protocol layer (before middleware)


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's HTTP protocol, answering its own errors as JSON.

    ``handle_error`` is what aiohttp calls for a request its parser rejected (status 400, ``exc`` the
    parser's HttpProcessingError), for an exception that escaped the handler and middleware (500)
    and for a handler timeout (504). The response always closes the connection, as aiohttp's does."""

    __slots__ = ()  # same layout as RequestHandler: see install_json_http_errors

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        remote = request.remote
        if isinstance(exc, HttpProcessingError):
            status, text = describe_parse_error(
                exc, max_line_size=self.max_line_size, max_field_size=self.max_field_size, max_headers=self.max_headers
            )
            # like aiohttp: a non-HTTP first line is what scanners and TLS clients send; not worth a warning
            level = logging.DEBUG if isinstance(exc, BadHttpMethod) else logging.WARNING
            log.log(level, "rejected a malformed HTTP request from %s: %d %s", remote, status, text)
        elif status == 500:
            log.error("unhandled error handling a request from %s", remote, exc_info=exc)
            text = INTERNAL_ERROR
        elif status == 504:
            log.warning("a request from %s timed out", remote)
            text = "the request timed out"
        else:
            text = message or HTTPStatus(status).phrase.lower()
            log.warning("HTTP error for a request from %s: %d %s", remote, status, text)

        if request.writer.output_size > 0:  # as aiohttp: part of a response went out, it cannot be replaced
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = error_response(status, text)
        response.force_close()
        return response


def _retag(obj: Any, cls: type) -> bool:
    """Make ``obj`` (built by aiohttp) an instance of ``cls``, a subclass that only overrides methods.
    Python refuses when the layouts differ (a future aiohttp adding __slots__): then it stays as is."""
    try:
        obj.__class__ = cls
        return True
    except TypeError as exc:
        _warn_once(f"cannot make a {type(obj).__name__} a {cls.__name__} ({exc})")
        return False


class _JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()  # aiohttp builds its protocol as usual (kwargs, fallbacks)...
        _retag(handler, JsonErrorRequestHandler)  # ...and it answers its errors as JSON
        return handler


def _aiohttp_version() -> tuple[int, int]:
    return tuple(int(p) for p in version("aiohttp").split(".")[:2] if p.isdigit())  # type: ignore[return-value]


def _hook_problem(app: web.Application) -> str | None:
    """Why the hook cannot be installed on this aiohttp, or None."""
    if not callable(getattr(app, "_make_handler", None)):
        return "web.Application._make_handler is gone"
    try:
        params = list(inspect.signature(web.RequestHandler.handle_error).parameters)
    except (TypeError, ValueError):
        return "web.RequestHandler.handle_error cannot be inspected"
    if params != ["self", "request", "status", "exc", "message"]:
        return f"web.RequestHandler.handle_error takes {params}"
    return None


_warned = False


def _warn_once(problem: str | None) -> None:
    global _warned
    if not _warned:
        _warned = True
        first, last = TESTED_AIOHTTP
        log.warning("JSON errors for malformed HTTP requests were checked with aiohttp %s to %s, this is %s%s",
                    ".".join(map(str, first)), ".".join(map(str, last)), version("aiohttp"),
                    f": {problem}; aiohttp's plain-text errors stay" if problem else "")


def install_json_http_errors(app: web.Application) -> bool:
    """Make the servers that runners build for ``app`` answer aiohttp's own protocol errors as JSON.

    Every runner (``web.run_app``, ``web.AppRunner``, aiohttp's test server) gets its low-level
    ``web.Server`` from ``app._make_handler(**kwargs)``, the one private name used here. The wrapper
    keeps aiohttp's construction, tags the server it made as a ``_JsonErrorServer`` (a ``web.Server``
    whose protocol factory tags each ``web.RequestHandler`` as a ``JsonErrorRequestHandler``, overriding
    the public ``handle_error``), and gives the request line its own limit (``MAX_REQUEST_LINE``,
    unless the runner or ``handler_args`` set one). Checked against aiohttp ``TESTED_AIOHTTP``; on an
    aiohttp where these names or signatures differ (or the objects cannot be re-tagged) it logs a
    warning and leaves aiohttp's plain-text errors in place: the server still works. Returns whether
    the hook is installed."""
    problem = _hook_problem(app)
    first, last = TESTED_AIOHTTP
    if problem is not None or not first <= _aiohttp_version() <= last:
        _warn_once(problem)
        if problem is not None:
            return False

    make_handler = app._make_handler

    def make_json_error_handler(**kwargs: Any) -> web.Server:
        kwargs.setdefault("max_line_size", MAX_REQUEST_LINE)
        kwargs.setdefault("max_field_size", MAX_HEADER_FIELD)
        server = make_handler(**kwargs)
        _retag(server, _JsonErrorServer)
        return server

    # an instance attribute shadowing the method, for this app only; set through object.__setattr__
    # because aiohttp's debug mode warns on any attribute set on an Application
    object.__setattr__(app, "_make_handler", make_json_error_handler)
    return True


__all__ = [
    "INTERNAL_ERROR",
    "JsonErrorRequestHandler",
    "describe_http_exception",
    "describe_multipart_error",
    "describe_parse_error",
    "error_response",
    "install_json_http_errors",
    "json_errors",
]
