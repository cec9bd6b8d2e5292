"""Frame a portrait at the output size: the face at a fixed height fraction, the rest of the photo kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from live_avatar.core.engines.lite.config import FramingConfig

FOREHEAD, CHIN = 10, 152  # FaceMesh landmarks at the top and bottom of the face


@dataclass(frozen=True)
class Framing:
    matrix: np.ndarray  # 2x3 affine: image pixel -> frame pixel
    size: tuple[int, int]  # (width, height) of the frame

    def apply(self, points: np.ndarray) -> np.ndarray:
        return (points @ self.matrix[:, :2].T + self.matrix[:, 2]).astype(np.float32)


def plan_framing(image_shape: tuple[int, ...], landmarks: np.ndarray, size: tuple[int, int], cfg: FramingConfig) -> Framing:
    """Choose the crop: the face height is face_height_fraction of the frame, unless the photo is
    too small for that, in which case the crop is the largest that fits (the face gets bigger)."""
    img_h, img_w = image_shape[:2]
    out_w, out_h = size
    face_h = float(np.linalg.norm(landmarks[CHIN] - landmarks[FOREHEAD]))
    center_x = float(landmarks[:, 0].mean())
    center_y = float((landmarks[CHIN, 1] + landmarks[FOREHEAD, 1]) / 2)
    crop_h = face_h / cfg.face_height_fraction
    # Do not ask for more than the photo has (keeps the background real, no padding) ...
    crop_h = min(crop_h, img_h, img_w * out_h / out_w)
    # ... but never crop into the face itself.
    crop_h = max(crop_h, face_h * 1.3)
    crop_w = crop_h * out_w / out_h
    x0 = center_x - crop_w / 2
    y0 = center_y - cfg.face_center_y * crop_h
    # Slide the crop inside the photo where possible.
    x0 = min(max(x0, 0.0), max(0.0, img_w - crop_w)) if crop_w <= img_w else (img_w - crop_w) / 2
    y0 = min(max(y0, 0.0), max(0.0, img_h - crop_h)) if crop_h <= img_h else (img_h - crop_h) / 2
    scale = out_h / crop_h
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], np.float64)
    return Framing(matrix, (out_w, out_h))


def render_framing(image: np.ndarray, framing: Framing) -> np.ndarray:
    import cv2

    matrix = framing.matrix.copy()
    scale = float(matrix[0, 0])
    if scale < 1:
        # warpAffine has no area filter: shrink the photo first (no aliasing), then shift.
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        matrix[:, :2] = np.eye(2)
        return cv2.warpAffine(small, matrix, framing.size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return cv2.warpAffine(image, matrix, framing.size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
