"""Find the face in a portrait and its 478 MediaPipe FaceMesh landmarks, also when the face is small.

FaceMesh alone only finds faces that fill a good part of the image. So a detector (MediaPipe's
full-range face detector, then OpenCV's Haar cascade as a fallback) locates the face first, and
FaceMesh runs on an upscaled square crop around it; the landmarks are mapped back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from live_avatar.core.contract import AvatarError
from live_avatar.core.engines.lite.config import DetectionConfig
from live_avatar.core.engines.lite.native_logs import quiet_native_logs

# MediaPipe graphs are not re-entrant; one lock serialises avatar preparation in a process.
_MEDIAPIPE_LOCK = threading.Lock()


@dataclass(frozen=True)
class FaceBox:
    x: float
    y: float
    width: float
    height: float
    score: float


@dataclass(frozen=True)
class FaceLandmarks:
    points: np.ndarray  # float32 [478, 2] pixel coordinates (x, y) in the image
    box: FaceBox  # the detector's box that led to them


def _resize_to_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    scale = min(1.0, max_side / max(image.shape[:2]))
    if scale >= 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _boxes_from(result, width: int, height: int, scale: float, x0: float = 0, y0: float = 0) -> list[FaceBox]:
    boxes = []
    for detection in result.detections or []:
        rel = detection.location_data.relative_bounding_box
        boxes.append(
            FaceBox(
                (x0 + rel.xmin * width) / scale,
                (y0 + rel.ymin * height) / scale,
                rel.width * width / scale,
                rel.height * height / scale,
                float(detection.score[0]),
            )
        )
    return boxes


def _detect_mediapipe(image: np.ndarray, cfg: DetectionConfig) -> list[FaceBox]:
    """MediaPipe's full-range detector on the whole image, then, if that finds nothing, on
    overlapping tiles (its input is 192x192, so a small face in a big photo needs a closer look)."""
    import mediapipe as mp

    with mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=cfg.min_confidence) as detector:
        small, scale = _resize_to_max_side(image, cfg.detect_max_side)
        boxes = _boxes_from(detector.process(small), small.shape[1], small.shape[0], scale)
        if boxes:
            return boxes
        big, scale = _resize_to_max_side(image, cfg.tile_max_side)
        tile, stride = cfg.tile_side, int(cfg.tile_side * 0.75)
        height, width = big.shape[:2]
        if max(height, width) <= tile:
            return []
        for y0 in sorted({*range(0, max(1, height - tile + 1), stride), max(0, height - tile)}):
            for x0 in sorted({*range(0, max(1, width - tile + 1), stride), max(0, width - tile)}):
                crop = np.ascontiguousarray(big[y0 : y0 + tile, x0 : x0 + tile])
                boxes += _boxes_from(detector.process(crop), crop.shape[1], crop.shape[0], scale, x0, y0)
    return boxes


def _detect_haar(image: np.ndarray, cfg: DetectionConfig) -> list[FaceBox]:
    import cv2

    small, scale = _resize_to_max_side(image, cfg.haar_max_side)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    min_side = max(16, int(cfg.min_face_pixels * scale))
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    # Haar gives no confidence; 0.5 marks it as the weaker source.
    return [FaceBox(x / scale, y / scale, w / scale, h / scale, 0.5) for (x, y, w, h) in found]


def _mesh_on_crop(image: np.ndarray, box: FaceBox, cfg: DetectionConfig) -> np.ndarray | None:
    """FaceMesh on a square crop around ``box`` resized to mesh_crop_side; landmarks in image pixels."""
    import cv2
    import mediapipe as mp

    side = max(box.width, box.height) * cfg.mesh_crop_scale
    cx, cy = box.x + box.width / 2, box.y + box.height / 2
    x0, y0 = cx - side / 2, cy - side / 2
    scale = cfg.mesh_crop_side / side
    # An affine warp does crop + resize in one step and pads outside the image with edge pixels.
    matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float64)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    crop = cv2.warpAffine(
        image, matrix, (cfg.mesh_crop_side, cfg.mesh_crop_side), flags=interpolation, borderMode=cv2.BORDER_REPLICATE
    )
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=cfg.min_confidence
    ) as mesh:
        result = mesh.process(crop)
    if not result.multi_face_landmarks:
        return None
    marks = result.multi_face_landmarks[0].landmark
    points = np.array([[m.x, m.y] for m in marks], np.float64) * cfg.mesh_crop_side
    return (points / scale + np.array([x0, y0])).astype(np.float32)


def find_face(image: np.ndarray, cfg: DetectionConfig | None = None) -> FaceLandmarks:
    """The most prominent face of an RGB uint8 image with its landmarks; AvatarError if there is none."""
    cfg = cfg if cfg is not None else DetectionConfig()
    with _MEDIAPIPE_LOCK, quiet_native_logs():
        boxes = _detect_mediapipe(image, cfg) or _detect_haar(image, cfg)
        boxes = [b for b in boxes if min(b.width, b.height) >= cfg.min_face_pixels]
        if not boxes:
            raise AvatarError(
                "no face was found in the photo; use a photo where one face is clearly visible, "
                f"looking at the camera, at least {cfg.min_face_pixels} pixels tall"
            )
        # Most prominent first: size weighted by confidence.
        boxes.sort(key=lambda b: b.width * b.height * b.score, reverse=True)
        for box in boxes[:3]:
            points = _mesh_on_crop(image, box, cfg)
            if points is not None:
                return FaceLandmarks(points, box)
    raise AvatarError(
        "a face was detected but its features (eyes, mouth) could not be located; "
        "use a sharper, well-lit, frontal photo"
    )
