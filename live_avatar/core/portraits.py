"""Load and validate a portrait image (upload bytes, a file path or an array) as RGB uint8.

Every failure is an ``AvatarError`` with a message a user can act on: wrong type, too large,
too small, unreadable. Face detection is the engine's job (``Engine.prepare_avatar``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from live_avatar.core.contract import AvatarError

# Magic numbers of the formats we accept (checked before decoding anything).
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("jpeg", b"\xff\xd8\xff", 0),
    ("png", b"\x89PNG\r\n\x1a\n", 0),
    ("webp", b"WEBP", 8),
    ("bmp", b"BM", 0),
)


@dataclass(frozen=True)
class PortraitLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # refuse decompression bombs before decoding
    min_side: int = 64


def sniff_image_type(data: bytes) -> str | None:
    """'jpeg' | 'png' | 'webp' | 'bmp' from the first bytes, or None."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if name == "webp" and data[:4] != b"RIFF":
                continue
            return name
    return None


def _pixel_count_from_header(data: bytes) -> int:
    """Width*height read from the header only (PIL opens lazily), so huge images are refused cheaply."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    except Exception as exc:  # PIL raises many types for corrupt headers
        raise AvatarError(f"the image could not be read ({exc.__class__.__name__}); upload a JPEG, PNG or WebP photo") from None
    return int(width) * int(height)


def load_portrait_bytes(data: bytes, limits: PortraitLimits = PortraitLimits()) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 [H, W, 3] (EXIF orientation applied, alpha dropped)."""
    import cv2

    if not data:
        raise AvatarError("the image is empty")
    if len(data) > limits.max_bytes:
        raise AvatarError(f"the image is too large ({len(data) / 1e6:.1f} MB > {limits.max_bytes / 1e6:.0f} MB)")
    kind = sniff_image_type(data)
    if kind is None:
        raise AvatarError("unsupported image type; upload a JPEG, PNG, WebP or BMP photo")
    pixels = _pixel_count_from_header(data)
    if pixels > limits.max_pixels:
        raise AvatarError(f"the image has too many pixels ({pixels / 1e6:.0f} MP > {limits.max_pixels / 1e6:.0f} MP)")
    # IMREAD_COLOR applies EXIF orientation and drops alpha.
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise AvatarError(f"the {kind.upper()} image could not be decoded (corrupt or truncated file)")
    return validate_portrait(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), limits)


def load_portrait(source: bytes | str | Path | np.ndarray, limits: PortraitLimits = PortraitLimits()) -> np.ndarray:
    """A portrait from bytes, a path, or an array -> RGB uint8 [H, W, 3]."""
    if isinstance(source, np.ndarray):
        return validate_portrait(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return load_portrait_bytes(bytes(source), limits)
    path = Path(source)
    if not path.is_file():
        raise AvatarError(f"no image file at {str(path)!r}")
    if path.stat().st_size > limits.max_bytes:
        raise AvatarError(f"the image is too large ({path.stat().st_size / 1e6:.1f} MB > {limits.max_bytes / 1e6:.0f} MB)")
    return load_portrait_bytes(path.read_bytes(), limits)


def validate_portrait(image: np.ndarray, limits: PortraitLimits = PortraitLimits()) -> np.ndarray:
    """Check an in-memory image and return it as contiguous RGB uint8 (gray is expanded, alpha dropped)."""
    if not isinstance(image, np.ndarray):
        raise AvatarError("the portrait must be an image array")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise AvatarError(f"the portrait must be an RGB image, got an array of shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and float(np.nanmax(image)) <= 1.0:
            image = image * 255.0  # float images in [0, 1]
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    height, width = image.shape[:2]
    if min(height, width) < limits.min_side:
        raise AvatarError(f"the image is too small ({width}x{height}); use at least {limits.min_side} pixels a side")
    if height * width > limits.max_pixels:
        raise AvatarError(f"the image has too many pixels ({height * width / 1e6:.0f} MP > {limits.max_pixels / 1e6:.0f} MP)")
    return np.ascontiguousarray(image)


def default_portrait() -> np.ndarray:
    """The built-in avatar: scikit-image's astronaut photo (Eileen Collins, NASA, public domain)."""
    from skimage import data

    return validate_portrait(data.astronaut())
