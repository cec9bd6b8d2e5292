"""Portrait loading: accepted formats decode to RGB uint8, everything else is a clear AvatarError."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from live_avatar.core.contract import AvatarError
from live_avatar.core.portraits import PortraitLimits, default_portrait, load_portrait, reduced_size, sniff_image_type, validate_portrait


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, 160, dtype=np.uint8)[None, :]  # red ramp left -> right
    img[:, :, 2] = 200
    img[40:80, 60:100] = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    return img


def test_png_round_trip_is_exact_and_rgb(photo):
    out = load_portrait(_encode(photo, ".png"))
    assert out.dtype == np.uint8 and out.shape == photo.shape
    np.testing.assert_array_equal(out, photo)  # lossless and channel order kept (not BGR)


def test_jpeg_and_path(tmp_path, photo):
    path = tmp_path / "p.jpg"
    path.write_bytes(_encode(photo, ".jpg"))
    out = load_portrait(path)
    assert out.shape == photo.shape
    assert np.abs(out.astype(int) - photo.astype(int)).mean() < 8
    assert out[:, -10:, 0].mean() > out[:, :10, 0].mean() + 150  # red ramp kept its direction


def test_sniff_types(photo):
    assert sniff_image_type(_encode(photo, ".png")) == "png"
    assert sniff_image_type(_encode(photo, ".jpg")) == "jpeg"
    assert sniff_image_type(_encode(photo, ".webp")) == "webp"
    assert sniff_image_type(b"GIF89a....") is None


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"GIF89a" + b"\0" * 100, "unsupported image type"),
        (b"<html>not an image</html>", "unsupported image type"),
    ],
)
def test_bad_bytes_are_refused(data, message):
    with pytest.raises(AvatarError, match=message):
        load_portrait(data)


def test_truncated_file_is_refused(photo):
    data = _encode(photo, ".png")
    with pytest.raises(AvatarError):
        load_portrait(data[:60])


def test_size_limits(photo):
    data = _encode(photo, ".png")
    with pytest.raises(AvatarError, match="too large"):
        load_portrait(data, PortraitLimits(max_bytes=100))
    with pytest.raises(AvatarError, match="too many pixels"):
        load_portrait(data, PortraitLimits(max_pixels=160 * 120 - 1))
    with pytest.raises(AvatarError, match="too small"):
        load_portrait(_encode(photo[:40, :40], ".png"))


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(AvatarError, match="no image file"):
        load_portrait(tmp_path / "missing.png")


def test_arrays_are_normalised(photo):
    gray = validate_portrait(photo[:, :, 0])
    assert gray.shape == (120, 160, 3) and np.array_equal(gray[:, :, 1], photo[:, :, 0])
    rgba = np.concatenate([photo, np.full((120, 160, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(validate_portrait(rgba), photo)
    as_float = validate_portrait(photo.astype(np.float32) / 255.0)
    assert np.abs(as_float.astype(int) - photo.astype(int)).max() <= 1
    with pytest.raises(AvatarError, match="RGB image"):
        validate_portrait(np.zeros((100, 100, 5), np.uint8))


def test_default_portrait_is_the_astronaut():
    img = default_portrait()
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert img.std() > 30  # a real photo, not a blank


# -- bounded decoding: sizes from the header, large images reduced while decoding ------------------
def _exif_jpeg(rgb: np.ndarray, orientation: int, quality: int = 90) -> bytes:
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a few bytes of pixel data behind it."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _png_chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int, photo: np.ndarray) -> bytes:
    """A real small JPEG whose SOF header is rewritten to declare width x height."""
    data = bytearray(_encode(photo, ".jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _marked(height: int, width: int) -> np.ndarray:
    """A smooth test card: red grows left -> right, blue top -> bottom, a green block top-left."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[:, :, 2] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    img[: height // 4, : width // 4, 1] = 255
    return img


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)


def test_reduced_size_keeps_aspect_and_min_side():
    limits = PortraitLimits()
    assert reduced_size(1000, 800, limits) == (1000, 800)  # small images are left alone
    assert reduced_size(7700, 5190, limits) == (2048, 1380)
    assert reduced_size(5190, 7700, limits) == (1380, 2048)
    assert reduced_size(6000, 70, limits) == (5486, 64)  # never below min_side because of the reduction


def test_large_jpeg_is_reduced_inside_the_decoder(monkeypatch):
    big = _marked(2400, 3600)
    data = _encode(big, ".jpg")
    limits = PortraitLimits(max_side=800)
    flags = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flag: flags.append(flag) or real_imdecode(buf, flag))
    out = load_portrait(data, limits)
    assert flags == [cv2.IMREAD_REDUCED_COLOR_4]  # 3600/4 = 900 >= 800 > 3600/8
    assert out.shape == (533, 800, 3) and out.dtype == np.uint8
    expected = cv2.resize(big, (800, 533), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 4  # same picture, same channel order


def test_large_jpeg_keeps_its_exif_orientation():
    big = _marked(1200, 1800)  # landscape, green block top-left
    out = load_portrait(_exif_jpeg(big, orientation=6), PortraitLimits(max_side=400))  # 6: rotate 90 clockwise
    assert out.shape == (400, 267, 3)  # portrait now, reduced to the long side
    assert out[:40, -40:, 1].mean() > 200 and out[:40, :40, 1].mean() < 60  # the block went top-right
    assert out[:, :20, 2].mean() > out[:, -20:, 2].mean() + 150  # blue (was top -> bottom) now grows right -> left


def test_small_jpeg_orientation_as_before():
    img = _marked(120, 200)
    out = load_portrait(_exif_jpeg(img, orientation=6))
    assert out.shape == (200, 120, 3)
    assert out[:20, -20:, 1].mean() > 200


def test_large_png_is_reduced_alpha_dropped_as_before():
    rgb = _marked(1500, 3000)
    alpha = np.zeros((1500, 3000, 1), np.uint8)  # fully transparent: the colour is kept, not composited
    ok, buf = cv2.imencode(".png", np.concatenate([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), alpha], axis=2))
    assert ok
    out = load_portrait(buf.tobytes())
    assert out.shape == (1024, 2048, 3)
    np.testing.assert_array_equal(out, cv2.resize(rgb, (2048, 1024), interpolation=cv2.INTER_AREA))


def test_small_png_with_alpha_as_before(photo):
    ok, buf = cv2.imencode(".png", np.concatenate([cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), np.full((120, 160, 1), 9, np.uint8)], axis=2))
    assert ok
    np.testing.assert_array_equal(load_portrait(buf.tobytes()), photo)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda photo: _png_header_only(8000, 6000), "too many pixels"),  # 48 MP > 40 MP
        (lambda photo: _png_header_only(30000, 30000), "too many pixels"),  # PIL's own bomb error
        (lambda photo: _png_header_only(6300, 6300), "PNG image has too many pixels"),  # the probe's zero PNG
        (lambda photo: _jpeg_declaring(9000, 6000, photo), "too many pixels"),
    ],
)
def test_header_declared_giants_are_refused_before_decoding(photo, no_decoding, make, message):
    with pytest.raises(AvatarError, match=message):
        load_portrait(make(photo))


def test_unscaled_formats_have_a_lower_cap(photo):
    data = _encode(_marked(300, 400), ".png")
    with pytest.raises(AvatarError, match=r"PNG image has too many pixels \(0\.1 MP > 0\.1 MP .*upload a JPEG"):
        load_portrait(data, PortraitLimits(max_unscaled_pixels=300 * 400 - 1))
    assert load_portrait(_encode(_marked(300, 400), ".jpg"), PortraitLimits(max_unscaled_pixels=300 * 400 - 1)).shape == (300, 400, 3)


def test_decodes_run_at_most_decode_concurrency_at_once(monkeypatch, photo):
    import threading
    import time

    from live_avatar.core import portraits

    running, most = 0, 0
    guard = threading.Lock()
    real = portraits._decode_bgr

    def slow_decode(*args):
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return real(*args)

    monkeypatch.setattr(portraits, "_decode_bgr", slow_decode)
    data = _encode(photo, ".png")
    threads = [threading.Thread(target=load_portrait, args=(data,)) for _ in range(3 * portraits.DECODE_CONCURRENCY + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= most <= portraits.DECODE_CONCURRENCY


def _jpeg(rgb: np.ndarray, progressive: bool, sampling: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive), cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok
    return buf.tobytes()


def test_progressive_jpeg_is_capped_by_its_coefficient_buffer():
    img = _marked(300, 400)
    limits = PortraitLimits(max_jpeg_buffer_bytes=2 * 300 * 400 * 3 - 1)  # just short of 4:4:4's 3 samples a pixel
    with pytest.raises(AvatarError, match="progressive JPEG has too many pixels .*baseline"):
        load_portrait(_jpeg(img, True, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444), limits)
    # the same pixels are fine as a baseline JPEG, or progressive with 4:2:0 chroma (1.5 samples a pixel)
    assert load_portrait(_jpeg(img, False, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444), limits).shape == (300, 400, 3)
    assert load_portrait(_jpeg(img, True, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420), limits).shape == (300, 400, 3)


def test_jpeg_scan_count_skips_an_embedded_thumbnail():
    from live_avatar.core.portraits import _jpeg_scan_count

    thumbnail = _jpeg(_marked(64, 64), True, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)  # progressive: many scans
    baseline = _jpeg(_marked(300, 400), False, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)
    app1 = b"Exif\0\0" + thumbnail
    with_thumbnail = baseline[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + baseline[2:]
    assert _jpeg_scan_count(baseline) == 1 and _jpeg_scan_count(with_thumbnail) == 1
    assert _jpeg_scan_count(thumbnail) > 1
    assert load_portrait(with_thumbnail).shape == (300, 400, 3)
