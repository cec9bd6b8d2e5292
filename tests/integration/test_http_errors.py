"""Every error is JSON {"error": "..."} with the right 4xx, aiohttp's own included (issue 13, point 5).

The request-line and header cases go over a raw socket: no HTTP client sends them. For each: the
status, a JSON body whose message says what is wrong without the parser's internals, and at most one
log line for it, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re

import aiohttp
import pytest
import pytest_asyncio

from live_avatar.server.config import ServerConfig
from tests.support.inprocess import serve_in_process
from tests.support.live_checks import lite_engine_of_capacity
from tests.support.raw_http import parse_response
from tests.support.server_log import recording_log

pytestmark = pytest.mark.asyncio(loop_scope="module")

# what a parser's message looks like: exception class names, Python reprs of bytes, caret lines
PARSER_INTERNALS = re.compile(r"Traceback|\b\w+(Error|Exception)\b|bytearray|b'|\^|\\x|aiohttp|llhttp")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with serve_in_process(ServerConfig(port=0), engine=lite_engine_of_capacity(2)) as running:
        yield running


@pytest.fixture
def server_log():
    """Every log record (any logger, INFO and up) while a test runs."""
    with recording_log(logging.INFO) as recorder:
        yield recorder.records


def host_port(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def raw_exchange(server, data: bytes, *, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the response until the server closes; (status, headers, body)."""
    reader, writer = await asyncio.open_connection(*host_port(server))
    try:
        writer.write(data)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    parsed = parse_response(response)
    return parsed.status, parsed.headers, parsed.body


def assert_json_error(status: int, content_type: str, body: bytes, expected_status: int, *words: str) -> str:
    assert status == expected_status, (status, body)
    assert content_type.split(";")[0].strip() == "application/json", (content_type, body)
    payload = json.loads(body)
    message = payload.get("error")
    assert isinstance(message, str) and message.strip(), payload
    assert not PARSER_INTERNALS.search(message), f"parser internals in {message!r}"
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return message


def assert_quiet_log(records: list[logging.LogRecord], most: int = 1) -> None:
    """At most ``most`` lines for the request, none a traceback or an error."""
    lines = [r for r in records if r.name.startswith(("aiohttp", "live_avatar", "asyncio"))]
    assert len(lines) <= most, [r.getMessage() for r in lines]
    for r in lines:
        assert r.exc_info is None and "Traceback" not in r.getMessage(), r.getMessage()
        assert r.levelno <= logging.WARNING, r.getMessage()


def request(method: str, target: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", "Host: test", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- aiohttp's protocol layer: answered before any middleware runs ------------------------------
RAW_CASES = {
    "request line over 8 KiB": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: test\r\n\r\n", 414, ("request line", "too long")),
    "header over 8 KiB": (request("GET", "/healthz", "X-Big: " + "a" * 9000), 431, ("header", "too long")),
    "header name over 8 KiB": (request("GET", "/healthz", "X-" + "a" * 9000 + ": 1"), 431, ("header", "too long")),
    "too many headers": (request("GET", "/healthz", *(f"X-H{i}: {i}" for i in range(200))), 431, ("too many headers",)),
    "not HTTP": (b"\x00\x01hello there\r\n\r\n", 400, ("http method",)),
    "TLS on the HTTP port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32), 400, ("https",)),
    "bad HTTP version": (request("GET", "/healthz", version="HTTP/9.x"), 400, ("request line",)),
    "bad request target": (request("GET", "/he\x7fllo"), 400, ()),
    "Content-Length not a number": (request("POST", "/offer", "Content-Length: abc"), 400, ("content-length",)),
    "Content-Length negative": (request("POST", "/offer", "Content-Length: -5"), 400, ("content-length",)),
    "Content-Length twice": (request("POST", "/offer", "Content-Length: 1", "Content-Length: 2", body=b"ab"), 400, ("content-length",)),
    "Content-Length with Transfer-Encoding": (
        request("POST", "/offer", "Content-Length: 3", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400, (),
    ),
    "unknown Transfer-Encoding": (request("POST", "/offer", "Transfer-Encoding: gzip, identity"), 400, ("transfer-encoding",)),
    "bad chunk size": (request("POST", "/offer", "Transfer-Encoding: chunked", body=b"zz\r\nab\r\n0\r\n\r\n"), 400, ("chunked",)),
    "no Host in HTTP/1.1": (b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n", 400, ("host",)),
    "space in a header name": (request("GET", "/healthz", "Bad Header: 1"), 400, ("header",)),
    "no colon in a header": (request("GET", "/healthz", "NoColonHere"), 400, ("header",)),
    "NUL in a header value": (request("GET", "/healthz", "X-Nul: a\x00b"), 400, ("header",)),
}


@pytest.mark.parametrize("case", list(RAW_CASES))
async def test_malformed_request_is_a_json_error(server, server_log, case: str) -> None:
    data, expected, words = RAW_CASES[case]
    status, headers, body = await raw_exchange(server, data)
    assert_json_error(status, headers.get("content-type", ""), body, expected, *words)
    await asyncio.sleep(0.05)  # let the server finish logging
    assert_quiet_log(server_log)


async def test_the_server_still_answers_after_malformed_requests(server) -> None:
    status, _, body = await raw_exchange(server, request("GET", "/healthz"))
    assert status == 200 and json.loads(body)["status"] == "ok"


async def test_request_line_just_under_the_limit_is_served(server) -> None:
    target = "/no-such-page-" + "a" * (8000 - len("/no-such-page-"))
    status, headers, body = await raw_exchange(server, request("GET", target))
    assert_json_error(status, headers["content-type"], body, 404)


async def test_client_that_leaves_mid_body_leaves_no_traceback(server, server_log) -> None:
    _, writer = await asyncio.open_connection(*host_port(server))
    boundary = "b0undary"
    head = request("POST", "/avatars", f"Content-Type: multipart/form-data; boundary={boundary}", "Content-Length: 100000")
    writer.write(head + f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\n".encode() + b"\x89PNG" * 10)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await asyncio.sleep(0.3)
    assert_quiet_log(server_log)


# -- routing: 404 and 405 --------------------------------------------------------------------------
async def test_unknown_route_is_a_json_404(server, server_log) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/no/such/page") as resp:
        message = assert_json_error(resp.status, resp.headers["Content-Type"], await resp.read(), 404)
    assert "/no/such/page" in message
    assert_quiet_log(server_log, most=0)


@pytest.mark.parametrize("method,path,allowed", [("GET", "/offer", "POST"), ("PUT", "/whip", "POST"), ("POST", "/healthz", "GET")])
async def test_wrong_method_is_a_json_405_with_allow(server, server_log, method: str, path: str, allowed: str) -> None:
    async with aiohttp.ClientSession() as http, http.request(method, f"{server.url}{path}") as resp:
        message = assert_json_error(resp.status, resp.headers["Content-Type"], await resp.read(), 405, method)
        assert allowed in resp.headers.get("Allow", ""), resp.headers
    assert allowed in message
    assert_quiet_log(server_log, most=0)


async def test_whip_patch_is_405_with_allow(server, server_log) -> None:
    """RFC 9725: a server without trickle ICE or ICE restarts answers PATCH on the resource with 405."""
    async with aiohttp.ClientSession() as http, http.patch(f"{server.url}/whip/abc") as resp:
        message = assert_json_error(resp.status, resp.headers["Content-Type"], await resp.read(), 405)
        assert resp.headers.get("Allow") == "DELETE"
    assert "trickle ICE" in message
    assert_quiet_log(server_log, most=0)


# -- bodies ----------------------------------------------------------------------------------------
async def post(server, path: str, body: bytes, content_type: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}{path}", data=body, headers={"Content-Type": content_type}) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


MULTIPART_CASES = {
    "no boundary parameter": ("multipart/form-data", b"--x\r\n\r\nabc\r\n--x--\r\n", "boundary"),
    "boundary not in the body": ("multipart/form-data; boundary=XX", b"--YY\r\ngarbage\r\n1234", "boundary"),
    "boundary over 70 characters": ("multipart/form-data; boundary=" + "b" * 80, b"--" + b"b" * 80 + b"\r\n", "boundary"),
    "part with a bad Content-Length": (
        "multipart/mixed; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="image"\r\nContent-Length: abc\r\n\r\n\x89PNG\r\n--XX--\r\n',
        "content-length",
    ),
    "garbage after a part": (
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="other"\r\n\r\nabc\r\n--XXgarbage\r\n\r\n',
        "multipart",
    ),
    "part header without a colon": (
        "multipart/form-data; boundary=XX",
        b"--XX\r\nthis is no header\r\n\r\nabc\r\n--XX--\r\n",
        "multipart",
    ),
    "bad _charset_ field": (
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\n' + b"x" * 64 + b"\r\n--XX--\r\n",
        "charset",
    ),
    "nested multipart, no image": (
        "multipart/form-data; boundary=XX",
        b"--XX\r\nContent-Type: multipart/mixed; boundary=YY\r\n\r\n--YY\r\n\r\nabc\r\n--YY--\r\n\r\n--XX--\r\n",
        "no image",
    ),
}


@pytest.mark.parametrize("case", list(MULTIPART_CASES))
async def test_garbage_multipart_upload_is_a_json_400(server, server_log, case: str) -> None:
    content_type, body, word = MULTIPART_CASES[case]
    status, ctype, payload = await post(server, "/avatars", body, content_type)
    assert_json_error(status, ctype, payload, 400, word)
    assert_quiet_log(server_log, most=1)


# -- SDP: messages say what is wrong and where, never the parser's exception -----------------------
SDP_CASES = {
    "not SDP": ("hello, I am not SDP", "line 1"),
    "bad m= line": ("v=0\r\nm=audio 9 nonsense\r\n", "line 2"),
    "bad payload type": ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 300\r\n", "line 5"),
    "bad c= line": ("v=0\r\nc=IN IPX 1.2.3.4\r\nm=audio 9 RTP/AVP 0\r\n", "line 2"),
    "not a line": ("v=0\r\nwhat is this\r\n", "line 2"),
    "no media": ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no m= sections"),
}


@pytest.mark.parametrize("case", list(SDP_CASES))
async def test_sdp_errors_name_the_problem(server, server_log, case: str) -> None:
    sdp, words = SDP_CASES[case]
    status, ctype, payload = await post(server, "/offer", json.dumps({"sdp": sdp, "type": "offer"}).encode(), "application/json")
    assert_json_error(status, ctype, payload, 400, "sdp offer", words)
    status, ctype, payload = await post(server, "/whip", sdp.encode(), "application/sdp")
    assert_json_error(status, ctype, payload, 400, "sdp offer", words)
    assert_quiet_log(server_log, most=0)
