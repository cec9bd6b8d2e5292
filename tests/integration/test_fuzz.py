"""Fuzz the HTTP surface while a real session streams (issue 13, point 7).

Random and mutated bodies, content types and query strings go to /offer, /whip and /avatars (multipart
with random parts and bytes), and raw malformed request lines and headers over a socket, against a
live server while one LoopbackPeer session streams. Every answer is below 500, every
error body is JSON with an "error" string that shows no exception names, nothing is logged with a
traceback, and the live session keeps receiving frames.

Bounded and deterministic: hypothesis with ``derandomize=True`` (the same examples on every run),
no example database, small ``max_examples``; the whole file runs in well under a minute.

The server (``avatar serve``) and the streaming peer run in child processes of their own, as they
would for a user: what the test process does between requests (hypothesis drawing examples, garbage
collections of the whole suite's heap) cannot stall them and pass for a stall of the server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import urllib.parse
from dataclasses import dataclass

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.live_checks import offer_sdp
from tests.support.peer_process import PeerProcess
from tests.support.raw_http import parse_response
from tests.support.server_process import ServerProcess, http_json
from tests.support.speech import write_wav

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EXCEPTION_NAME = re.compile(r"Traceback|\b[A-Z]\w*(Error|Exception)\b")
TIMEOUT_S = 10.0


# -------------------------------------------------------------------------------- the live server


@dataclass
class LiveServer:
    """``avatar serve`` (lite) in a child process, and one streaming LoopbackPeer in another: the
    test process draws examples and collects garbage as it likes without stalling either."""

    server: ServerProcess
    peer: PeerProcess
    offer_sdp: str
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.server.port

    def log_mark(self) -> int:
        """Where the server's log ends now (its size): ``tracebacks(since=)`` reads from there."""
        return self.server.log_path.stat().st_size

    def tracebacks(self, since: int = 0) -> list[str]:
        """The server's log lines from byte ``since`` on that show a traceback or an unhandled error."""
        with open(self.server.log_path, "rb") as log_file:
            log_file.seek(since)
            text = log_file.read().decode(errors="replace")
        return [line for line in text.splitlines() if UNHANDLED.search(line)]


SERVER_CONFIG = {
    "sessions": {"max_sessions": 4},
    # the lite engine's capacity fixed (not a CPU measurement), so the server's own limits are under test
    "engine_options": {"capacity": 4},
    "limits": {
        "max_upload_bytes": 200_000,
        "max_sdp_bytes": 20_000,
        "max_sessions_per_client": 4,  # every fuzzed request comes from 127.0.0.1
        "uploads_per_minute": 100_000,  # reach the multipart reader, not the rate limit
    },
}
UNHANDLED = re.compile(r"Traceback|Task exception was never retrieved|Exception in callback|Error handling request")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    tone = 0.2 * np.sin(2 * np.pi * 220 * np.arange(16_000 * 20) / 16_000)  # the peer's microphone (then silence)
    wav = write_wav(folder / "tone.wav", tone.astype(np.float32), 16_000)
    config = folder / "server.yaml"
    config.write_text(yaml.safe_dump(SERVER_CONFIG))
    server = ServerProcess(["--config", str(config), "--engine", "lite"], folder / "server.log").start()
    try:
        offer = asyncio.run(offer_sdp())
        peer = PeerProcess(server.url, wav, folder).start()
        try:
            yield LiveServer(server, peer, offer)
        finally:
            peer.stop()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- the checks


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    head: bool = False  # the answer to a HEAD request: no body


def check(live: LiveServer, answer: Answer | None, what: str, mark: int) -> dict | None:
    """No 5xx; an error is JSON with an "error" string that names no exception; nothing logged with
    a traceback since record ``mark``. The JSON body."""
    assert live.tracebacks(mark) == [], what
    if answer is None:  # the server waited for more of an incomplete request: no answer is no 5xx
        return None
    assert answer.status < 500, f"{what}: {answer.status} {answer.body[:300]!r}"
    if answer.status < 400:
        return None
    content_type = answer.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == "application/json", f"{what}: {answer.status} {content_type} {answer.body[:300]!r}"
    if answer.head:
        return None
    payload = json.loads(answer.body)
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"].strip(), payload
    message = payload["error"]
    assert not EXCEPTION_NAME.search(message), f"{what}: {payload['error']!r}"
    return payload


def http_request(live: LiveServer, method: str, target: str, body: bytes, headers: dict[str, str]) -> Answer:
    conn = http.client.HTTPConnection(live.host, live.port, timeout=TIMEOUT_S)
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def close_session(live: LiveServer, answer: Answer, what: str) -> None:
    """A fuzzed offer that was good enough opened a session: close it again at once."""
    if answer.status == 200:
        session_id = json.loads(answer.body)["session_id"]
        path = f"/sessions/{session_id}"
    elif answer.status == 201:
        path = answer.headers["location"]
    else:
        return
    closed = http_request(live, "DELETE", path, b"", {})
    assert closed.status in (200, 404), f"{what}: closing the session it opened: {closed.status} {closed.body!r}"


def fuzz_post(live: LiveServer, path: str, body: bytes, content_type: str) -> None:
    """POST it, check the answer; close the session a good enough offer opened."""
    mark = live.log_mark()
    answer = http_request(live, "POST", path, body, {"Content-Type": content_type})
    check(live, answer, f"POST {path[:60]}", mark)
    close_session(live, answer, f"POST {path[:60]}")


# -------------------------------------------------------------------------------- the strategies

def mostly(usual, *others, share: int = 75):
    """``usual`` in about ``share`` % of the examples, else one of ``others`` (hypothesis has no
    weights, and its one_of favours the last branch as much as the first)."""
    return st.integers(0, 99).flatmap(lambda i: usual if i < share else others[i % len(others)])


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
QUERY = st.one_of(
    st.just(""),
    st.dictionaries(
        st.sampled_from(["avatar_id", "prompt", "token", "x", ""]), st.text(max_size=30), max_size=3
    ).map(lambda q: "?" + urllib.parse.urlencode(q) if q else ""),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(lambda s: "?" + urllib.parse.quote(s, safe="=&;%+")),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_sdp(draw, base: str) -> str:
    """The real offer, with a few of its lines deleted, doubled, swapped, cut or filled with junk."""
    lines = base.rstrip("\r\n").split("\r\n")
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "double", "swap", "cut", "junk value", "junk line", "digits"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "double":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "junk value":
            key, sep, _ = lines[i].partition(":") if lines[i].startswith("a=") else lines[i].partition("=")
            lines[i] = key + (sep or "=") + draw(st.text(max_size=30))
        elif op == "junk line":
            lines.insert(i, draw(st.text(max_size=40)))
        elif op == "digits":
            lines[i] = re.sub(r"\d+", lambda m: str(draw(st.integers(-5, 2**40))), lines[i], count=1)
    newline = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    return newline.join(lines) + newline


def offer_bodies(base: str):
    sdp = mostly(mutated_sdp(base), st.text(max_size=200), JSON_VALUES)
    offer_object = st.fixed_dictionaries(
        {"sdp": sdp},
        optional={
            "type": mostly(st.just("offer"), st.just("answer"), JSON_VALUES),
            "avatar_id": st.one_of(st.just("default"), JSON_VALUES),
            "prompt": st.one_of(st.text(max_size=50), JSON_VALUES),
        },
    )
    return mostly(
        offer_object.map(lambda o: json.dumps(o).encode()),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=500),
        mutated_sdp(base).map(str.encode),
    )


CONTENT_TYPES = st.one_of(
    st.sampled_from([
        "application/json", "application/json; charset=utf-8", "application/sdp", "text/plain", "",
        "multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded", "application/json; charset=klingon",
    ]),
    HEADER_TEXT,
)


# multipart/form-data bodies: random boundaries, parts, part headers and bytes
BOUNDARY = mostly(st.just("fuzzb0undary"), st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80))


@st.composite
def multipart_part(draw, boundary: str) -> bytes:
    headers = []
    name = draw(mostly(st.sampled_from(["image", "file", "avatar"]), st.sampled_from(["_charset_", "other", ""]), HEADER_TEXT))
    disposition = draw(st.sampled_from([
        f'form-data; name="{name}"',
        f'form-data; name="{name}"',
        f'form-data; name="{name}"; filename="{draw(HEADER_TEXT)}"',
        f"form-data; name={name}; filename*=utf-8''{urllib.parse.quote(draw(st.text(max_size=20)))}",
        f"form-data; name=\"{name}\"; filename*={draw(HEADER_TEXT)}''x",
        draw(HEADER_TEXT),
    ]))
    if draw(st.booleans()) or name in ("image", "file", "avatar"):
        headers.append(f"Content-Disposition: {disposition}")
    if draw(st.booleans()):
        headers.append("Content-Type: " + draw(st.sampled_from([
            "image/png", "application/octet-stream", f"multipart/mixed; boundary={boundary}x", "text/plain; charset=foo",
        ]) | HEADER_TEXT))
    if draw(st.booleans()):
        headers.append("Content-Transfer-Encoding: " + draw(st.sampled_from(["base64", "quoted-printable", "binary", "7bit"]) | HEADER_TEXT))
    if draw(st.booleans()):
        headers.append("Content-Length: " + draw(st.sampled_from(["0", "5", "-1", "abc", "99999999"]) | HEADER_TEXT))
    if draw(st.booleans()):
        headers.append(draw(HEADER_TEXT))  # maybe not a header at all
    data = draw(st.one_of(st.binary(max_size=600), st.just(b"\x89PNG\r\n\x1a\n" + bytes(40))))
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + data


@st.composite
def multipart_upload(draw) -> tuple[str, bytes]:
    boundary = draw(BOUNDARY)
    declared = draw(mostly(st.just(boundary), BOUNDARY))
    content_type = draw(mostly(
        st.just(f"multipart/form-data; boundary={declared}"),
        st.just(f'multipart/form-data; boundary="{declared}"'),
        st.just(f"multipart/mixed; boundary={declared}"),
        st.sampled_from(["multipart/form-data", "multipart/"]),
        share=85,
    ))
    body = b""
    if draw(st.integers(0, 3)) == 0:
        body += draw(st.binary(max_size=40))  # a preamble
    for part in draw(st.lists(multipart_part(boundary), min_size=1, max_size=3)):
        body += b"--" + boundary.encode() + b"\r\n" + part + b"\r\n"
    if draw(st.integers(0, 3)):
        body += b"--" + boundary.encode() + b"--\r\n"
    body += draw(mostly(st.just(b""), st.just(b"epilogue\r\n"), st.binary(max_size=20)))
    if body and draw(st.integers(0, 3)) == 0:  # cut it, or flip a byte
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] if draw(st.booleans()) else body[:cut] + bytes([draw(st.integers(0, 255))]) + body[cut + 1 :]
    return content_type, body


# raw requests over a socket: a plain request, then a few of the things no HTTP client sends
PATHS = st.sampled_from(["/", "/offer", "/whip", "/avatars", "/healthz", "/sessions/x/stats", "/no/such/page"])
JUNK = st.binary(max_size=40)
RAW_MUTATIONS = {
    "method": st.one_of(st.sampled_from([b"PUT", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE", b"get", b"G ET", b""]), JUNK),
    "target": st.one_of(
        st.sampled_from([b"*", b"http://x/offer", b"//", b"/%00", b"/..%2f..%2fetc", b"/a b", b"", b"/\x7f"]),
        JUNK,
        st.integers(7_000, 12_000).map(lambda n: b"/" + b"a" * n),
    ),
    "version": st.one_of(st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.x", b"HTTP/11", b"http/1.1", b""]), JUNK),
    "drop host": st.just(None),
    "header": st.tuples(
        st.one_of(st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Content-Type", b"Expect", b"Upgrade",
                                   b"Content-Encoding", b"Authorization", b"Cookie", b"Origin", b"Bad Name", b""]), JUNK),
        st.sampled_from([b": ", b":", b" : ", b""]),
        st.one_of(st.sampled_from([b"0", b"abc", b"-1", b"1, 2", b"chunked", b"gzip", b"chunked, gzip", b"100-continue",
                                   b"websocket", b"deflate", b"a\x00b"]), JUNK),
    ),
    "long header": st.integers(7_000, 12_000).map(lambda n: b"X-Long: " + b"v" * n),
    "long header name": st.integers(7_000, 12_000).map(lambda n: b"X-" + b"n" * n + b": 1"),
    "many headers": st.integers(100, 200),
    "bare newlines": st.just(None),
    "body": JUNK,
}


@st.composite
def raw_request(draw) -> bytes:
    method, path, version = draw(st.sampled_from([b"GET", b"POST", b"DELETE", b"HEAD"])), draw(PATHS).encode(), b"HTTP/1.1"
    headers = [b"Host: fuzz"]
    body = b""
    newline = b"\r\n"
    for name in draw(st.lists(st.sampled_from(sorted(RAW_MUTATIONS)), max_size=3)):
        value = draw(RAW_MUTATIONS[name], label=name)
        if name == "method":
            method = value
        elif name == "target":
            path = value
        elif name == "version":
            version = value
        elif name == "drop host":
            headers = [h for h in headers if h != b"Host: fuzz"]
        elif name == "header":
            headers.append(b"".join(value))
        elif name in ("long header", "long header name"):
            headers.append(value)
        elif name == "many headers":
            headers.extend(b"X-Many-%d: 1" % i for i in range(value))
        elif name == "bare newlines":
            newline = b"\n"
        elif name == "body":
            body = value
            if draw(st.booleans()):
                headers.append(b"Content-Length: %d" % len(body))
    headers.append(b"Connection: close")
    return b" ".join((method, path, version)) + newline + newline.join(headers) + newline + newline + body


def raw_exchange(live: LiveServer, data: bytes) -> Answer | None:
    """Send raw bytes; the response, or None when the server is still waiting for the rest."""
    with socket.create_connection((live.host, live.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        sock.settimeout(1.0)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:  # socket.timeout: the server still waits for the rest of the request
            pass
        except ConnectionResetError:  # the server closed with unread request bytes: the answer came first
            pass
    if not received:
        return None
    response = parse_response(received)
    return Answer(response.status, response.headers, response.body, head=data.startswith(b"HEAD "))


# ------------------------------------------------------------------------------------ the tests


@FUZZ
@given(data=st.data())
def test_fuzz_offer(live: LiveServer, data) -> None:
    body = data.draw(offer_bodies(live.offer_sdp), label="body")
    content_type = data.draw(mostly(st.just("application/json"), CONTENT_TYPES), label="content type")
    fuzz_post(live, "/offer" + data.draw(QUERY, label="query"), body, content_type)


@FUZZ
@given(data=st.data())
def test_fuzz_whip(live: LiveServer, data) -> None:
    body = data.draw(mostly(mutated_sdp(live.offer_sdp).map(str.encode), st.binary(max_size=300)), label="body")
    content_type = data.draw(mostly(st.just("application/sdp"), CONTENT_TYPES), label="content type")
    fuzz_post(live, "/whip" + data.draw(QUERY, label="query"), body, content_type)


@settings(FUZZ, max_examples=80)
@given(upload=multipart_upload(), query=QUERY)
def test_fuzz_avatar_upload(live: LiveServer, upload: tuple[str, bytes], query: str) -> None:
    content_type, body = upload
    fuzz_post(live, "/avatars" + query, body, content_type)


@settings(FUZZ, max_examples=120)
@given(request=raw_request())
def test_fuzz_raw_requests(live: LiveServer, request: bytes) -> None:
    mark = live.log_mark()
    check(live, raw_exchange(live, request), f"raw {request[:80]!r}", mark)


def test_live_session_kept_streaming_and_nothing_logged_a_traceback(live: LiveServer) -> None:
    """Runs last: the session that streamed through all of it never stalled, and no traceback."""
    status, _ = http_json("GET", f"{live.server.url}/sessions/{live.peer.session_id}/stats")
    assert status == 200, "the live session was closed"
    report = live.peer.finish()
    assert report["frames_in_window"] >= 15 * report["window_s"], f"the live session no longer streams at ~25 fps: {report}"
    assert report["max_gap_s"] < 1.0, f"the live session stalled for a second or more: {report}"
    assert live.tracebacks() == []
