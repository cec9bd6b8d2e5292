"""A session's video into a virtual camera (pyvirtualcam: v4l2loopback on Linux, the OBS Virtual
Camera on Windows and macOS), so that a video-call app can pick the avatar as its webcam.

pyvirtualcam is an optional extra (``pip install 'live-avatar-server[virtualcam]'``). The camera
is opened when the output is asked for: without the package, or without a device (no
v4l2loopback module loaded, no OBS camera installed), the request is refused with the reason
(HTTP 409). Frames go to the camera from the output's own thread; a frame of another size than
the camera's is fitted into it (letterboxed) by ``fit_frame``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from live_avatar.server.outputs.stream_push import OutputRequestError
from live_avatar.server.outputs.worker import ThreadedOutput

log = logging.getLogger(__name__)

MAX_DEVICE_CHARS = 256


def fit_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """An RGB frame scaled to fit ``width`` x ``height`` and centred on black (aspect kept)."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((height, width, 3), np.uint8)
    y, x = (height - new_h) // 2, (width - new_w) // 2
    canvas[y : y + new_h, x : x + new_w] = scaled
    return canvas


def open_pyvirtualcam(device: str | None, width: int, height: int, fps: int) -> Any:
    """A pyvirtualcam.Camera; OutputRequestError (409) with the reason when there is none."""
    try:
        import pyvirtualcam
    except ImportError:
        raise OutputRequestError(
            "virtual cameras need the optional pyvirtualcam package: pip install 'live-avatar-server[virtualcam]'", status=409
        ) from None
    try:
        return pyvirtualcam.Camera(width=width, height=height, fps=fps, device=device, fmt=pyvirtualcam.PixelFormat.RGB)
    except Exception as exc:  # noqa: BLE001 - pyvirtualcam says what is missing (RuntimeError, ValueError)
        raise OutputRequestError(f"no virtual camera is available on this server: {exc}", status=409) from None


def check_device(device: Any) -> str | None:
    if device is None:
        return None
    if not isinstance(device, str) or not device or len(device) > MAX_DEVICE_CHARS or "\x00" in device:
        raise OutputRequestError("'device' must be a camera device name, e.g. /dev/video10 (or left out for the first one)")
    return device


class VirtualCameraOutput(ThreadedOutput):
    type = "virtual_camera"

    def __init__(self, session: Any, camera: Any, device: str | None) -> None:
        # a short queue: a camera shows the newest frame, backlog is only latency
        super().__init__(session, queue_slots=5)
        self.camera = camera
        self.device = device or getattr(camera, "device", None)
        self.frames_sent = 0

    @classmethod
    def open(cls, session: Any, device: str | None, width: int, height: int, fps: int,
             camera_factory: Callable[..., Any] = open_pyvirtualcam) -> VirtualCameraOutput:
        """Open the camera (blocking: call from a worker thread) and wrap it."""
        return cls(session, camera_factory(device, width, height, fps), device)

    def work(self) -> None:
        try:
            self.state = "live"
            while (slot := self.next_slot()) is not None:
                if slot is False:
                    continue
                self.camera.send(fit_frame(slot.frame, self.camera.width, self.camera.height))
                self.frames_sent += 1
        finally:
            self.camera.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device, "frames_sent": self.frames_sent}
