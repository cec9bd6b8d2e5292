"""Portrait loading: accepted formats decode to RGB uint8, everything else is a clear AvatarError."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from live_avatar.core.contract import AvatarError
from live_avatar.core.portraits import PortraitLimits, default_portrait, load_portrait, sniff_image_type, validate_portrait


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
