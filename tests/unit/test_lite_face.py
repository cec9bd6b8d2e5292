"""Lite engine avatar set-up: the face is found (close-up and small in a wide shot), framed at the
output size, and photos without a face are refused with a clear AvatarError."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from live_avatar.core.contract import AvatarError
from live_avatar.core.engines.lite import LiteEngine
from live_avatar.core.engines.lite.landmarks import find_face
from live_avatar.core.engines.lite.rig import CHIN, FOREHEAD, LIPS_LOWER_INNER, LIPS_UPPER_INNER

ASTRONAUT_PASTE = (700, 1100, 200)  # y, x, side of the astronaut inside a 1600x1200 canvas


@pytest.fixture(scope="module")
def astronaut_landmarks() -> np.ndarray:
    return find_face(data.astronaut()).points


@pytest.fixture(scope="module")
def wide_shot() -> np.ndarray:
    y, x, side = ASTRONAUT_PASTE
    canvas = np.full((1200, 1600, 3), 120, np.uint8)
    canvas[y : y + side, x : x + side] = cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    return canvas


def test_face_found_on_the_astronaut(astronaut_landmarks):
    pts = astronaut_landmarks
    assert pts.shape == (478, 2)
    # Her face is in the upper middle of the photo: mouth below the eyes, chin below the mouth.
    mouth = pts[LIPS_UPPER_INNER + LIPS_LOWER_INNER].mean(0)
    assert 180 < mouth[0] < 260 and 120 < mouth[1] < 170
    assert pts[FOREHEAD, 1] < pts[159, 1] < mouth[1] < pts[CHIN, 1]
    assert 80 < pts[CHIN, 1] - pts[FOREHEAD, 1] < 140


def test_small_face_in_a_wide_shot(wide_shot, astronaut_landmarks):
    pts = find_face(wide_shot).points
    y, x, side = ASTRONAUT_PASTE
    expected = astronaut_landmarks * (side / 512) + np.array([x, y])
    # The face is ~40 px tall here; landmarks agree with the close-up's, scaled, to a pixel or two.
    assert np.abs(pts[:468] - expected[:468]).mean() < 2.0


def test_wide_shot_is_framed_around_the_face(wide_shot):
    engine = LiteEngine(size="256*256")
    avatar = engine.prepare_avatar(wide_shot)
    assert avatar.frame.shape == (256, 256, 3)
    pts = avatar.rig.landmarks
    face_h = pts[CHIN, 1] - pts[FOREHEAD, 1]
    assert 0.2 * 256 < face_h < 0.45 * 256  # the face fills a head-and-shoulders frame, not 3 % of it
    assert 0.3 * 256 < pts[:, 0].mean() < 0.7 * 256


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(data.coffee(), id="coffee"),
        pytest.param(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8), id="noise"),
        pytest.param(np.full((300, 300, 3), 200, np.uint8), id="blank"),
    ],
)
def test_no_face_is_refused(image):
    engine = LiteEngine()
    with pytest.raises(AvatarError, match="no face"):
        engine.prepare_avatar(image)


def test_bad_arrays_are_refused_before_detection():
    with pytest.raises(AvatarError, match="too small"):
        LiteEngine().prepare_avatar(np.zeros((10, 10, 3), np.uint8))


def test_native_log_noise_is_dropped_and_other_stderr_kept(capfd):
    import os

    from live_avatar.core.engines.lite.native_logs import quiet_native_logs

    with quiet_native_logs():
        os.write(2, b"W0000 00:00:1795263502.815372   27552 inference_feedback_manager.cc:114] Feedback manager\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"another thread's log line\n")
        os.write(2, b"E0000 00:00:1795263502.815372   27552 graph.cc:1] a real error\n")
    err = capfd.readouterr().err
    assert err == "another thread's log line\nE0000 00:00:1795263502.815372   27552 graph.cc:1] a real error\n"


def test_preparing_a_face_prints_no_mediapipe_log_lines(capfd):
    find_face(data.astronaut())
    err = capfd.readouterr().err
    assert "inference_feedback_manager" not in err and "TensorFlow Lite" not in err, err
