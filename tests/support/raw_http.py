"""Read an HTTP response off a raw socket, for requests that no HTTP client would send."""

from __future__ import annotations

import re
from dataclasses import dataclass

STATUS_LINE = re.compile(r"HTTP/\d\.\d (\d{3})\b")


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes  # as much as Content-Length says, when it says


def parse_response(received: bytes) -> RawResponse:
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    match = STATUS_LINE.match(status_line)
    assert match, f"not an HTTP response: {received[:200]!r}"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "")
    return RawResponse(int(match.group(1)), headers, body[: int(length)] if length.isdigit() else body)
