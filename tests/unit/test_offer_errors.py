"""check_offer says what is wrong with an SDP offer, and where; aiohttp's parser errors get messages
without the parser's internals (live_avatar/server/webrtc/signaling.py, server/http_errors.py)."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, BadStatusLine, InvalidHeader, LineTooLong

from live_avatar.server.http_errors import describe_multipart_error, describe_parse_error
from live_avatar.server.webrtc.signaling import OfferError, check_offer, offer_error_from_aiortc
from tests.support.live_checks import offer_sdp

INTERNALS = re.compile(r"\b\w+(Error|Exception)\b|Traceback|\bb'|bytearray|\^")


@pytest.fixture(scope="module")
def offer() -> str:
    return asyncio.run(offer_sdp())


def line_of(sdp: str, prefix: str) -> int:
    return next(n for n, line in enumerate(sdp.splitlines(), 1) if line.startswith(prefix))


def refused(sdp, *words: str, status: int = 400) -> str:
    with pytest.raises(OfferError) as caught:
        check_offer(sdp, 20_000)
    message = str(caught.value)
    assert caught.value.status == status, message
    assert message.strip() and not INTERNALS.search(message), message
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    return message


def test_a_real_offer_passes(offer: str) -> None:
    checked = check_offer(offer, 20_000)
    assert [m.kind for m in checked.parsed.media] == ["audio", "video"]


@pytest.mark.parametrize("sdp", [None, "", "   \r\n", 42, {"sdp": "v=0"}])
def test_no_sdp(sdp) -> None:
    refused(sdp, "no SDP")


def test_too_large(offer: str) -> None:
    refused(offer + "a=x-pad:" + "z" * 30_000 + "\r\n", "too large", status=413)


def test_first_line_must_be_v0() -> None:
    refused("hello, I am not SDP", "malformed", "line 1", "v=0")
    refused("\r\nv=1\r\n", "line 2", "v=0")


def test_a_line_that_is_no_sdp_line(offer: str) -> None:
    broken = offer.replace("s=-\r\n", "s=-\r\nthis is no SDP line\r\n")
    refused(broken, "line 4", "this is no SDP line", "<type>=<value>")


@pytest.mark.parametrize(
    "old,new,prefix,expected",
    [
        ("a=rtpmap:96 opus/48000/2", "a=rtpmap:96 opus", "a=rtpmap:96", "a=rtpmap:<payload type>"),
        ("a=rtpmap:96 opus/48000/2", "a=rtpmap:x opus/48000/2", "a=rtpmap:x", "a=rtpmap:<payload type>"),
        ("a=setup:actpass", "a=setup:bogus", "a=setup:bogus", "actpass"),
        ("c=IN IP4", "c=IN IPX", "c=IN IPX", "c=IN IP4"),
        ("a=fmtp:98 apt=97", "a=fmtp:77 apt=97", "a=fmtp:77", "a=rtpmap line of the same m= section"),
        ("a=ssrc-group:FID", "a=ssrc-group:FID x", "a=ssrc-group", "a=ssrc-group:"),
    ],
)
def test_a_bad_line_is_named_with_its_number(offer: str, old: str, new: str, prefix: str, expected: str) -> None:
    broken = offer.replace(old, new, 1)
    assert broken != offer
    message = refused(broken, "malformed", f"line {line_of(broken, prefix)} ", expected)
    assert "AssertionError" not in message


def test_a_bad_m_line(offer: str) -> None:
    refused("v=0\r\nm=audio 9 nonsense\r\n", "line 2", "m=<media> <port> <protocol> <formats>")
    broken = offer.replace("UDP/TLS/RTP/SAVPF 96 9 0 8", "UDP/TLS/RTP/SAVPF 96 9 0 300", 1)
    refused(broken, f"line {line_of(broken, 'm=audio')} ", "payload types")


def test_no_media_and_no_audio(offer: str) -> None:
    refused("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no m= sections")
    audio_start, video_start = offer.index("m=audio"), offer.index("m=video")
    refused(offer[:audio_start] + offer[video_start:], "no audio m= section")


@pytest.mark.parametrize("direction,state", [("a=recvonly", "recvonly"), ("a=inactive", "inactive")])
def test_audio_that_is_not_sent(offer: str, direction: str, state: str) -> None:
    refused(offer.replace("a=sendrecv", direction, 1), "sends no audio", state, f"line {line_of(offer, 'm=audio')}")


def test_a_rejected_audio_section(offer: str) -> None:
    broken = re.sub(r"m=audio \d+", "m=audio 0", offer, count=1)
    refused(broken, "sends no audio", "port 0")


@pytest.mark.parametrize(
    "old,new,words",
    [
        ("a=ice-ufrag:", "a=x-ufrag:", ("no ICE credentials", "a=ice-ufrag")),
        ("a=ice-pwd:", "a=x-pwd:", ("no ICE credentials",)),
        ("a=fingerprint:", "a=x-fingerprint:", ("no DTLS fingerprint",)),
        ("a=setup:actpass", "a=x-setup:actpass", ("no a=setup",)),
        ("a=rtcp-mux\r\n", "", ("a=rtcp-mux",)),
        ("a=mid:0\r\n", "", ("no a=mid",)),
        ("a=mid:1\r\n", "a=mid:0\r\n", ("same a=mid",)),
        ("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 7", ("a=group:BUNDLE", "'7'")),
    ],
)
def test_what_aiortc_needs_of_each_section(offer: str, old: str, new: str, words: tuple[str, ...]) -> None:
    broken = offer.replace(old, new)
    assert broken != offer
    refused(broken, *words)


def test_no_codec_in_common(offer: str) -> None:
    audio = offer[offer.index("m=audio") : offer.index("m=video")]
    alien = re.sub(r"a=rtpmap:(\d+) \S+", r"a=rtpmap:\1 x-alien/16000", audio)
    refused(offer.replace(audio, alien), "no codec the server supports", "audio m= section", "opus/48000")


def test_aiortc_errors_are_told_without_their_class() -> None:
    assert "a=rtcp-mux" in str(offer_error_from_aiortc(ValueError("RTCP mux is not enabled")))
    assert "no codec" in str(offer_error_from_aiortc(RuntimeError("Failed to set remote video description send parameters")))
    for exc in (AttributeError("'NoneType' object has no attribute 'transport'"), AssertionError(), KeyError("x")):
        message = str(offer_error_from_aiortc(exc))
        assert message.startswith("the SDP offer could not be applied: ") and not INTERNALS.search(message), message


# -- aiohttp's parser errors ---------------------------------------------------------------------
def test_long_request_line_and_long_header_are_told_apart() -> None:
    assert describe_parse_error(LineTooLong(b"/aaaa", 8192), max_line_size=8192, max_field_size=8190)[0] == 414
    assert describe_parse_error(LineTooLong(b"aaaa", 8190), max_line_size=8192, max_field_size=8190)[0] == 431
    status, message = describe_parse_error(LineTooLong(b"aaaa", 8190), max_line_size=8190, max_field_size=8190)
    assert status == 431 and "too long" in message


@pytest.mark.parametrize(
    "exc,status,word",
    [
        (BadHttpMessage("Too many headers received"), 431, "too many headers"),
        (BadHttpMethod(error="Received HTTPS traffic on an HTTP port"), 400, "HTTPS"),
        (BadHttpMethod(error="Invalid method encountered:\n\n  b'\\x00'\n   ^"), 400, "HTTP method"),
        (BadStatusLine(error="Bad status line:\n  Invalid minor version"), 400, "request line"),
        (BadHttpMessage("Invalid character in Content-Length:\n\n  b'Content-Length: x'\n ^"), 400, "Content-Length"),
        (BadHttpMessage("Content-Length can't be present with Transfer-Encoding"), 400, "both"),
        (BadHttpMessage("Missing 'Host' header in request."), 400, "Host"),
        (BadHttpMessage("Duplicate 'content-type' header found."), 400, "more than one content-type"),
        (InvalidHeader(b"X-\x00"), 400, "header"),
        (BadHttpMessage("something new in a later aiohttp"), 400, "not valid HTTP"),
    ],
)
def test_parser_errors_say_what_is_wrong(exc, status: int, word: str) -> None:
    got_status, message = describe_parse_error(exc)
    assert got_status == status and word.lower() in message.lower(), message
    assert not INTERNALS.search(message), message


@pytest.mark.parametrize(
    "exc,word",
    [
        (ValueError("boundary missed for Content-Type: multipart/form-data"), "no boundary"),
        (ValueError("Could not find starting boundary b'--x'"), "does not contain the boundary"),
        (ValueError("Invalid boundary b'--y', expected b'--x'"), "not followed by the boundary"),
        (RuntimeError("Invalid default charset"), "_charset_"),
        (BadHttpMessage("Too many headers received"), "too many headers"),
        (LineTooLong(b"x" * 100, 8190), "too long"),
        (ValueError("something else"), "malformed"),
    ],
)
def test_multipart_errors_say_what_is_wrong(exc: Exception, word: str) -> None:
    message = describe_multipart_error(exc)
    assert message.startswith("the upload is not valid multipart/form-data: ") and word in message, message
    assert not INTERNALS.search(message), message
