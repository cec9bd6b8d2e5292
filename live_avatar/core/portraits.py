"""Load and validate a portrait image (upload bytes, a file path or an array) as RGB uint8.

Every failure is an ``AvatarError`` with a message a user can act on: wrong type, too large,
too small, unreadable. Face detection is the engine's job (``Engine.prepare_avatar``).

Decoding is bounded before it starts. The size comes from the header (nothing decoded yet) and is
checked against ``PortraitLimits``; images longer than ``max_side`` come out reduced to it. A JPEG
is reduced inside the decoder (libjpeg's 1/2, 1/4, 1/8 scaled IDCT, OpenCV ``IMREAD_REDUCED_*``),
so a 40 MP photo costs the work and memory of a 10 MP one or less (a progressive JPEG still buffers
its coefficients at full size: ``max_jpeg_buffer_bytes``). PNG, WebP and BMP decoders have no such
scaling: those are decoded at full size and reduced right away, so they have a lower pixel cap
(``max_unscaled_pixels``). At most ``DECODE_CONCURRENCY`` decodes run at once in this process,
which bounds the memory they take together and leaves cores to live sessions.
"""

from __future__ import annotations

import io
import math
import os
import threading
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
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}


@dataclass(frozen=True)
class PortraitLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # refuse decompression bombs before decoding
    min_side: int = 64
    # A portrait never needs more: the engines' frames are 512 to ~1280 px a side by default, the
    # lite face detector looks at 1024 px (tiles at 2048). Larger images are reduced to this long side while decoding.
    max_side: int = 2048
    # PNG, WebP and BMP decode at full size before they can be reduced (about 2x3 bytes a pixel at
    # the peak, ~15 ms a megapixel): capped lower than JPEG, which is reduced inside the decoder.
    max_unscaled_pixels: int = 4096 * 4096
    # A progressive (multi-scan) JPEG is decoded through libjpeg's whole-image coefficient buffer,
    # 2 bytes a sample at full size whatever the output scale: 4:2:0 40 MP takes 120 MB, 4:4:4 240 MB.
    max_jpeg_buffer_bytes: int = 128 * 1024 * 1024


def _decode_concurrency() -> int:
    """Decodes that may run at once: half the cores this process may use, 1 to 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // 2))


DECODE_CONCURRENCY = _decode_concurrency()
_decode_slots = threading.BoundedSemaphore(DECODE_CONCURRENCY)


def sniff_image_type(data: bytes) -> str | None:
    """'jpeg' | 'png' | 'webp' | 'bmp' from the first bytes, or None."""
    for name, magic, offset in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            if name == "webp" and data[:4] != b"RIFF":
                continue
            return name
    return None


def _too_many_pixels(pixels: float, cap: int, kind: str | None = None) -> AvatarError:
    if kind is None:
        return AvatarError(f"the image has too many pixels ({pixels / 1e6:.0f} MP > {cap / 1e6:.0f} MP)")
    side = math.isqrt(cap)
    return AvatarError(
        f"the {kind.upper()} image has too many pixels ({pixels / 1e6:.1f} MP > {cap / 1e6:.1f} MP for PNG, WebP "
        f"and BMP, e.g. {side}x{side}); downscale it or upload a JPEG"
    )


@dataclass(frozen=True)
class _Header:
    width: int  # as stored, before EXIF orientation
    height: int
    samples_per_pixel: float = 3.0  # JPEG: 1.5 for 4:2:0 chroma, 3 for 4:4:4, 1 gray, 4 CMYK


def _read_header(data: bytes, kind: str, limits: PortraitLimits) -> _Header:
    """The header only: PIL opens lazily, so huge images are refused before any pixel is decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[kind]]) as im:
            width, height = im.size
            layers = getattr(im, "layer", None) if kind == "jpeg" else None  # JPEG: (id, h, v, table) a component
    except Image.DecompressionBombError:  # PIL's own cap (~179 MP), far above ours
        raise AvatarError(f"the image has too many pixels (more than {limits.max_pixels / 1e6:.0f} MP)") from None
    except Exception:  # PIL raises many types for corrupt headers; none of them helps a user
        raise AvatarError(
            f"the {kind.upper()} image's header is damaged or truncated; upload a JPEG, PNG or WebP photo"
        ) from None
    if layers:
        h_max, v_max = max(c[1] for c in layers), max(c[2] for c in layers)
        return _Header(int(width), int(height), sum(c[1] * c[2] for c in layers) / (h_max * v_max))
    return _Header(int(width), int(height))


def _jpeg_scan_count(data: bytes) -> int:
    """Scans in the (first) image of a JPEG: more than one (progressive, or sequential with one
    scan a component) makes libjpeg buffer the whole image's coefficients. Markers up to the first
    scan are walked by their lengths (an EXIF thumbnail has scans of its own); after it, entropy-coded
    data never holds 0xFF followed by a marker code, so the remaining scans are counted up to EOI."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 1  # malformed: the decoder will say so
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # the first scan
            end = data.find(b"\xff\xd9", pos)
            return 1 + data.count(b"\xff\xda", pos + 2, end if end >= 0 else len(data))
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return 1


def reduced_size(width: int, height: int, limits: PortraitLimits = PortraitLimits()) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is reduced to: the long side at most
    ``max_side``, the aspect kept, and never a short side below ``min_side`` because of it."""
    scale = min(1.0, max(limits.max_side / max(width, height), limits.min_side / max(1, min(width, height))))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _jpeg_reduction(width: int, height: int, limits: PortraitLimits) -> int:
    """The largest libjpeg scale denominator (8, 4, 2 or 1) that still decodes to at least the reduced size."""
    target_w, target_h = reduced_size(width, height, limits)
    for factor in (8, 4, 2):
        if -(-width // factor) >= target_w and -(-height // factor) >= target_h:
            return factor
    return 1


def _decode_bgr(data: bytes, kind: str, width: int, height: int, limits: PortraitLimits) -> np.ndarray | None:
    """Decode (JPEG: at a reduced scale) and reduce to ``reduced_size``; BGR uint8, None if undecodable."""
    import cv2

    # IMREAD_COLOR (and its reduced variants) applies EXIF orientation and drops alpha.
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    factor = _jpeg_reduction(width, height, limits) if kind == "jpeg" else 1
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags[factor])
    if bgr is None:
        return None
    target = reduced_size(bgr.shape[1], bgr.shape[0], limits)
    if target != (bgr.shape[1], bgr.shape[0]):
        bgr = cv2.resize(bgr, target, interpolation=cv2.INTER_AREA)  # the full-size image is freed here
    return bgr


def load_portrait_bytes(data: bytes, limits: PortraitLimits = PortraitLimits()) -> np.ndarray:
    """Encoded image bytes -> RGB uint8 [H, W, 3] (EXIF orientation applied, alpha dropped),
    reduced to at most ``limits.max_side`` on its long side."""
    import cv2

    if not data:
        raise AvatarError("the image is empty")
    if len(data) > limits.max_bytes:
        raise AvatarError(f"the image is too large ({len(data) / 1e6:.1f} MB > {limits.max_bytes / 1e6:.0f} MB)")
    kind = sniff_image_type(data)
    if kind is None:
        raise AvatarError("unsupported image type; upload a JPEG, PNG, WebP or BMP photo")
    header = _read_header(data, kind, limits)
    pixels = header.width * header.height
    if pixels > limits.max_pixels:
        raise _too_many_pixels(pixels, limits.max_pixels)
    if kind != "jpeg" and pixels > limits.max_unscaled_pixels:
        raise _too_many_pixels(pixels, limits.max_unscaled_pixels, kind)
    if kind == "jpeg" and 2 * pixels * header.samples_per_pixel > limits.max_jpeg_buffer_bytes and _jpeg_scan_count(data) > 1:
        cap = limits.max_jpeg_buffer_bytes / (2 * header.samples_per_pixel)
        raise AvatarError(
            f"the progressive JPEG has too many pixels ({pixels / 1e6:.1f} MP > {cap / 1e6:.1f} MP for a progressive "
            "JPEG with this colour sampling); save it as a standard (baseline) JPEG or downscale it"
        )
    with _decode_slots:
        bgr = _decode_bgr(data, kind, header.width, header.height, limits)
        if bgr is None:
            raise AvatarError(f"the {kind.upper()} image could not be decoded (corrupt or truncated file)")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return validate_portrait(rgb, limits)


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
