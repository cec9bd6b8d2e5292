"""Lite renderer: each control moves its own region of the photo and nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from live_avatar.core.engines.lite import LiteEngine
from live_avatar.core.engines.lite.renderer import Renderer
from live_avatar.core.engines.lite.rig import CHIN, FOREHEAD, Pose
from live_avatar.core.portraits import default_portrait


@pytest.fixture(scope="module")
def avatar():
    return LiteEngine().prepare_avatar(default_portrait())


@pytest.fixture(scope="module")
def renderer(avatar):
    return Renderer(avatar.rig)


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(axis=2)


def _mouth_box(pts):
    x0, y0 = pts[[61, 291, 0]].min(0).astype(int)
    x1, y1 = pts[[61, 291, CHIN]].max(0).astype(int)
    return slice(y0, y1), slice(x0, x1)


def test_rest_pose_is_the_photo(avatar, renderer):
    frame = renderer.render(Pose())
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, avatar.frame)


def test_mouth_opening_is_local(avatar, renderer):
    pts = avatar.rig.landmarks
    rest = renderer.render(Pose())
    d = _diff(renderer.render(Pose(mouth_open=1.0)), rest)
    assert d[_mouth_box(pts)].mean() > 30  # the mouth region changed a lot
    # Far regions are untouched, exactly: background corners, forehead, eyes.
    for corner in (d[:48, :48], d[:48, -48:], d[-48:, :48], d[-48:, -48:]):
        assert corner.max() == 0
    forehead = d[int(pts[FOREHEAD, 1]) : int(min(pts[105, 1], pts[334, 1])) - 4, int(pts[105, 0]) : int(pts[334, 0])]
    assert forehead.size > 200 and forehead.max() == 0
    eyes = d[int(pts[159, 1]) - 4 : int(pts[145, 1]) + 4, int(pts[33, 0]) : int(pts[263, 0])]
    assert eyes.max() == 0


def test_mouth_opening_paints_a_dark_gap_that_grows(avatar, renderer):
    sl = _mouth_box(avatar.rig.landmarks)

    def dark_pixels(opening: float) -> int:
        region = renderer.render(Pose(mouth_open=opening))[sl].astype(int)
        return int((region.sum(axis=2) < 160).sum())

    closed, half, full = dark_pixels(0.0), dark_pixels(0.5), dark_pixels(1.0)
    assert closed < half < full
    assert full - closed > 150


def test_blink_closes_the_eyes_only(avatar, renderer):
    pts = avatar.rig.landmarks
    rest = renderer.render(Pose())
    closed = renderer.render(Pose(blink_left=1.0, blink_right=1.0))
    d = _diff(closed, rest)
    for upper, lower, inner, outer in ((159, 145, 133, 33), (386, 374, 362, 263)):
        y0, y1 = int(pts[upper, 1]) - 2, int(pts[lower, 1]) + 2
        x0, x1 = sorted((int(pts[inner, 0]), int(pts[outer, 0])))
        assert d[y0:y1, x0:x1].mean() > 40
        # The iris (dark) is hidden: the eye region gets brighter on average (lid skin over it).
        assert closed[y0:y1, x0:x1].mean() > rest[y0:y1, x0:x1].mean() + 10
    sl = _mouth_box(pts)
    assert d[sl].max() == 0


def test_head_motion_moves_the_head_not_the_background(avatar, renderer):
    pts = avatar.rig.landmarks
    rest = renderer.render(Pose())
    d = _diff(renderer.render(Pose(head_x=4.0, head_roll=1.5)), rest)
    face = d[int(pts[FOREHEAD, 1]) : int(pts[CHIN, 1]), int(pts[234, 0]) : int(pts[454, 0])]
    assert face.mean() > 10
    assert d[:48, :48].max() == 0 and d[:48, -48:].max() == 0


def test_mouth_gap_follows_the_head(avatar, renderer):
    """The painted interior moves with the head: no cavity floating where the mouth was."""
    sl = _mouth_box(avatar.rig.landmarks)
    moved = renderer.render(Pose(mouth_open=0.8, head_x=6.0))
    still = renderer.render(Pose(mouth_open=0.8))

    def dark_center_x(img):
        ys, xs = np.nonzero(img[sl].astype(int).sum(axis=2) < 160)
        return xs.mean()

    assert 4.0 < dark_center_x(moved) - dark_center_x(still) < 8.0


def test_gaze_moves_the_irises_and_nothing_else(avatar, renderer):
    pts = avatar.rig.landmarks
    rest = renderer.render(Pose())
    right = renderer.render(Pose(gaze_x=2.0))
    left = renderer.render(Pose(gaze_x=-2.0))

    def iris_x(img, outer, inner, upper, lower):
        x0, x1 = sorted((int(pts[outer, 0]), int(pts[inner, 0])))
        y0, y1 = int(pts[upper, 1]) + 1, int(pts[lower, 1])  # inside the opening: iris, not lashes
        luma = img[y0:y1, x0:x1].astype(float).mean(axis=2)
        weight = np.clip(120 - luma, 0, None)  # the dark iris
        return (weight.sum(axis=0) * np.arange(x1 - x0)).sum() / weight.sum()

    for eye in ((33, 133, 159, 145), (263, 362, 386, 374)):
        assert iris_x(right, *eye) > iris_x(rest, *eye) + 0.4
        assert iris_x(left, *eye) < iris_x(rest, *eye) - 0.4
    d = _diff(right, rest)
    d[int(pts[159, 1]) - 8 : int(pts[145, 1]) + 8] = 0  # the eye band may change; nothing else
    assert d.max() == 0
