"""The face rig: from a framed portrait and its landmarks, dense displacement fields per control.

Each control (jaw opening, rounded / spread lips, each eyelid, brows, head translation, roll,
scale, chest) owns a forward displacement field in frame pixels at unit activation. A pose is a
weighted sum of them; the renderer inverts the sum and warps the photo with ``cv2.remap``.

Fields come from per-landmark displacements interpolated piecewise-linearly over the Delaunay
triangulation of the FaceMesh vertices (plus a ring of still anchors), then smoothed, so each
control only moves its own region. Opening the mouth tears the face along the top edge of the
lower lip: two fields (above / below that edge) are joined by a sharp mask, and the gap between
them is where the renderer paints the mouth interior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from live_avatar.core.engines.lite.config import RigConfig
from live_avatar.core.engines.lite.eyelids import EyeLid, build_eyelid

# Ordered FaceMesh landmark chains (image-left to image-right along each contour).
LIPS_UPPER_OUTER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_LOWER_OUTER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_UPPER_INNER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_LOWER_INNER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
EYE_R_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]  # the subject's right eye (image left)
EYE_R_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
EYE_L_UPPER = [362, 398, 384, 385, 386, 387, 388, 466, 263]
EYE_L_LOWER = [362, 382, 381, 380, 374, 373, 390, 249, 263]
BROW_R = [70, 63, 105, 66, 107, 46, 53, 52, 65, 55]
BROW_L = [300, 293, 334, 296, 336, 276, 283, 282, 295, 285]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]  # fmt: skip
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1
FACE_LEFT, FACE_RIGHT = 234, 454
MESH_VERTICES = 468  # 468..477 are iris points: inside the eye, not part of the skin mesh


@dataclass
class Pose:
    """Rig controls for one frame. Face controls are 0..1; head ones are in pixels / degrees."""

    mouth_open: float = 0.0
    mouth_round: float = 0.0
    mouth_spread: float = 0.0
    blink_right: float = 0.0  # the subject's right eye (image left)
    blink_left: float = 0.0
    gaze_x: float = 0.0  # px, eyeballs turn across the face (to image right)
    gaze_y: float = 0.0  # px, down the face
    brow_raise: float = 0.0
    head_x: float = 0.0  # px
    head_y: float = 0.0  # px
    head_roll: float = 0.0  # degrees
    head_scale: float = 0.0  # relative (0.01 = 1 % larger)
    chest_y: float = 0.0  # px (breathing)


FACE_CONTROLS = ("mouth_open", "mouth_round", "mouth_spread", "brow_raise")  # displacement-field controls
EYE_CONTROLS = ("blink_right", "blink_left")  # closed-form eyelid maps (eyelids.py), with gaze_x/gaze_y


@dataclass
class FieldGroup:
    """Fields of some controls over one rectangle of the frame: float32 [K, h, w, 2]."""

    names: tuple[str, ...]
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    fields: np.ndarray


@dataclass
class MouthGap:
    """What the renderer needs to paint the mouth interior."""

    edge: np.ndarray  # float32 [n, 2]: the top edge of the lower lip (the tear line), frame pixels
    disp_upper: np.ndarray  # float32 [K_face, n, 2]: its displacement per face control, upper side
    disp_lower: np.ndarray  # ... lower side
    width: float  # mouth width in pixels
    photo_mouth_open: bool  # the photo already shows the mouth interior (teeth): no painted teeth
    skin_luma: float
    skin_rgb: np.ndarray  # float32: median colour around the nose tip (the photo's colour cast)


@dataclass
class FaceRig:
    frame: np.ndarray  # uint8 [H, W, 3], the framed portrait
    landmarks: np.ndarray  # float32 [478, 2] in frame pixels
    face: FieldGroup  # face controls (FACE_CONTROLS), around the face
    head: FieldGroup  # head_x, head_y, head_roll, head_scale, chest_y
    mouth: MouthGap
    eyes: dict[str, EyeLid]  # EYE_CONTROLS -> eyelid map
    face_height: float

    @property
    def size(self) -> tuple[int, int]:
        return self.frame.shape[1], self.frame.shape[0]


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class _FaceFrame:
    """Face-aligned coordinates: ``u`` along the mouth (to image right), ``v`` towards the chin."""

    def __init__(self, pts: np.ndarray):
        self.pts = pts
        u = pts[291] - pts[61]
        self.mouth_width = float(np.linalg.norm(u))
        self.u = u / self.mouth_width
        self.v = np.array([-self.u[1], self.u[0]])
        if np.dot(pts[CHIN] - pts[FOREHEAD], self.v) < 0:
            self.v = -self.v
        self.mouth_center = pts[LIPS_UPPER_INNER + LIPS_LOWER_INNER].mean(axis=0)
        self.face_height = float(np.linalg.norm(pts[CHIN] - pts[FOREHEAD]))
        self.face_width = float(np.linalg.norm(pts[FACE_RIGHT] - pts[FACE_LEFT]))
        self.face_center = pts[FACE_OVAL].mean(axis=0)

    def local(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = p - self.mouth_center
        return d @ self.u, d @ self.v

    def world(self, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
        return np.stack([du * self.u[0] + dv * self.v[0], du * self.u[1] + dv * self.v[1]], axis=-1)


def _control_displacements(ff: _FaceFrame, cfg: RigConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex displacement [K_face, 468, 2] at unit activation, for the upper and lower side."""
    pts = ff.pts[:MESH_VERTICES]
    n = len(pts)
    M = ff.mouth_width
    a, b = ff.local(pts)
    half = M / 2
    lens = np.sqrt(np.clip(1 - (a / half) ** 2, 0, 1))
    lens_lip = np.maximum(0.3, lens)
    up = np.zeros((len(FACE_CONTROLS), n, 2))
    lo = np.zeros_like(up)

    lips_upper = np.array(sorted(set(LIPS_UPPER_OUTER + LIPS_UPPER_INNER) - {61, 291, 78, 308}))
    lips_lower = np.array(sorted(set(LIPS_LOWER_OUTER + LIPS_LOWER_INNER) - {61, 291, 78, 308}))
    corners = np.array([61, 291, 78, 308])
    lower_inner = np.array(LIPS_LOWER_INNER[1:-1])
    lips_all = np.concatenate([lips_upper, lips_lower, corners])

    # --- jaw opening: lower lip and chin drop, upper lip rises a little, corners drop a third.
    drop = cfg.mouth_open_max * M
    hfall = np.clip(1 - (a / (0.62 * ff.face_width)) ** 2, 0, 1)
    below = _smoothstep((b + 0.1 * M) / (0.6 * M))
    jaw_dv = drop * cfg.chin_follow * below * hfall  # skin below the mouth follows the jaw
    jaw_dv[lips_lower] = drop * lens_lip[lips_lower]
    jaw_dv[lips_upper] = -cfg.upper_lip_lift * drop * lens_lip[lips_upper]
    jaw_dv[corners] = 0.3 * drop
    jaw_du = np.zeros(n)
    jaw_du[corners] = -0.04 * M * np.sign(a[corners])
    jaw_lo = ff.world(jaw_du, jaw_dv)
    jaw_up = jaw_lo.copy()
    # Upper side of the tear: the top edge of the lower lip stays with the upper lip (and any teeth
    # the photo shows); the lower side moves with the jaw.
    jaw_up[lower_inner] = ff.world(np.zeros(len(lower_inner)), -cfg.upper_lip_lift * drop * lens_lip[lower_inner])
    # Each side's field is only used on its own side of the tear, but smoothing mixes in values
    # from across it. So each side continues flat across the tear (the edge's own displacement,
    # fading with distance), and the edge moves exactly as far as the lip next to it.
    ea, eb = ff.local(ff.pts[LIPS_LOWER_INNER])
    order = np.argsort(ea)
    edge_b = np.interp(a, ea[order], eb[order])
    inner_a = a[lower_inner]
    inner_order = np.argsort(inner_a)
    near = np.abs(a) < half * 1.05
    off_edge = np.ones(n, bool)
    off_edge[LIPS_LOWER_INNER] = False
    for field, side in ((jaw_lo, near & off_edge & (b < edge_b)), (jaw_up, near & off_edge & (b > edge_b))):
        values = field[lower_inner][inner_order]
        edge_disp = np.stack([np.interp(a, inner_a[inner_order], values[:, c]) for c in range(2)], axis=-1)
        weight = np.clip(1 - np.abs(b - edge_b) / (0.5 * M), 0, 1)[:, None]
        field[side] = (edge_disp * weight)[side]
    up[0], lo[0] = jaw_up, jaw_lo

    # --- rounded lips (o, u): corners move in, lips pout open slightly; cheeks near the corners follow.
    corner_dist = np.minimum(np.linalg.norm(pts - pts[61], axis=1), np.linalg.norm(pts - pts[291], axis=1))
    corner_follow = np.clip(1 - corner_dist / (0.7 * M), 0, 1)

    round_du = -cfg.round_inward * M * np.clip(a / half, -1, 1) * corner_follow
    round_du[lips_all] = -cfg.round_inward * M * np.clip(a[lips_all] / half, -1, 1)
    round_dv = np.zeros(n)
    round_dv[lips_upper] = -0.04 * M * lens[lips_upper]
    round_dv[lips_lower] = 0.05 * M * lens[lips_lower]
    up[1] = lo[1] = ff.world(round_du, round_dv)

    # --- spread lips (ee): corners out and slightly up, lips thin.
    spread_du = cfg.spread_outward * M * np.clip(a / half, -1, 1) * corner_follow
    spread_du[lips_all] = cfg.spread_outward * M * np.clip(a[lips_all] / half, -1, 1)
    spread_dv = -0.03 * M * corner_follow
    spread_dv[lips_lower] = -0.015 * M * lens[lips_lower]
    up[2] = lo[2] = ff.world(spread_du, spread_dv)

    # --- brows up.
    eye_brow = float(np.linalg.norm(pts[BROW_R].mean(0) - pts[EYE_R_UPPER].mean(0)))
    brow_dv = np.zeros(n)
    brow_dv[BROW_R + BROW_L] = -cfg.brow_raise * eye_brow
    up[3] = lo[3] = ff.world(np.zeros(n), brow_dv)
    return up.astype(np.float32), lo.astype(np.float32)


def _anchor_ring(ff: _FaceFrame, size: tuple[int, int]) -> np.ndarray:
    """Still points around the face (two scaled copies of the face oval) and the frame corners."""
    oval = ff.pts[FACE_OVAL]
    center = ff.face_center
    rings = [center + (oval - center) * s for s in (1.35, 1.8)]
    w, h = size
    corners = np.array([[-2, -2], [w + 1, -2], [-2, h + 1], [w + 1, h + 1]], np.float64)
    return np.concatenate(rings + [corners])


def _interpolate_fields(points: np.ndarray, values: np.ndarray, box: tuple[int, int, int, int], cfg: RigConfig) -> np.ndarray:
    """Piecewise-linear interpolation of values [N, C] over a grid covering box, smoothed: [h, w, C]."""
    import cv2
    from scipy.interpolate import LinearNDInterpolator

    y0, y1, x0, x1 = box
    step = cfg.field_step
    gy, gx = np.mgrid[y0 : y1 + step : step, x0 : x1 + step : step].astype(np.float64)
    interp = LinearNDInterpolator(points, values, fill_value=0.0)
    coarse = interp(gx, gy).astype(np.float32)  # [gh, gw, C]
    sigma = cfg.field_blur_px / step
    channels = coarse.shape[2]
    out = np.empty((y1 - y0, x1 - x0, channels), np.float32)
    for c in range(channels):
        smooth = cv2.GaussianBlur(coarse[:, :, c], (0, 0), sigma) if sigma > 0 else coarse[:, :, c]
        # Resize so that coarse sample i lands on pixel y0 + i*step.
        big = cv2.resize(smooth, (smooth.shape[1] * step, smooth.shape[0] * step), interpolation=cv2.INTER_LINEAR)
        shift = (step - 1) / 2.0
        m = np.float32([[1, 0, shift], [0, 1, shift]])
        big = cv2.warpAffine(big, m, (big.shape[1], big.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[:, :, c] = big[: y1 - y0, : x1 - x0]
    return out


def _tear_mask(ff: _FaceFrame, box: tuple[int, int, int, int]) -> np.ndarray:
    """1 below the top edge of the lower lip, 0 above; sharp between the mouth corners, soft beyond."""
    from scipy.special import expit

    y0, y1, x0, x1 = box
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    pts = np.stack([gx, gy], axis=-1)
    a, b = ff.local(pts)
    ea, eb = ff.local(ff.pts[LIPS_LOWER_INNER])
    order = np.argsort(ea)
    edge_b = np.interp(a, ea[order], eb[order])  # constant beyond the corners
    half = ff.mouth_width / 2
    softness = 0.6 + 0.9 * np.maximum(np.abs(a) - half * 0.9, 0)
    return expit((b - edge_b) / softness).astype(np.float32)


def _box_around(points: np.ndarray, margin: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    x0, y0 = np.floor(points.min(0) - margin).astype(int)
    x1, y1 = np.ceil(points.max(0) + margin).astype(int)
    return max(0, y0), min(h, y1), max(0, x0), min(w, x1)


def _head_fields(ff: _FaceFrame, size: tuple[int, int], cfg: RigConfig) -> FieldGroup:
    """Head translation / roll / scale under a soft head mask, and the chest rising (breathing)."""
    w, h = size
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    fh, fw = ff.face_height, ff.face_width
    center = ff.face_center - 0.08 * fh * ff.v  # include the hair above the forehead
    du = (gx - center[0]) * ff.u[0] + (gy - center[1]) * ff.u[1]
    dv = (gx - center[0]) * ff.v[0] + (gy - center[1]) * ff.v[1]
    r = np.sqrt((du / (0.62 * fw)) ** 2 + (dv / (0.62 * fh)) ** 2)
    outside = np.maximum(r - 1, 0) * 0.62 * fh  # roughly pixels outside the head ellipse
    head = 1 - _smoothstep(outside / (cfg.head_mask_falloff * fh))
    pivot = ff.pts[CHIN] + 0.35 * fh * ff.v  # the head turns on the neck
    chin_v = float(np.dot(ff.pts[CHIN] - center, ff.v))
    body = _smoothstep((dv - chin_v - 0.35 * fh) / (0.5 * fh)) * (1 - _smoothstep((np.abs(du) - 1.2 * fw) / (0.6 * fw)))
    zeros = np.zeros_like(gx)
    fields_ = np.stack(
        [
            np.stack([head, zeros], -1),  # head_x, per px
            np.stack([zeros, head], -1),  # head_y, per px
            np.stack([-(gy - pivot[1]) * head, (gx - pivot[0]) * head], -1) * (np.pi / 180),  # roll, per degree
            np.stack([(gx - ff.face_center[0]) * head, (gy - ff.face_center[1]) * head], -1),  # scale, per unit
            np.stack([zeros, -body], -1),  # chest_y, per px (up)
        ]
    ).astype(np.float32)
    return FieldGroup(("head_x", "head_y", "head_roll", "head_scale", "chest_y"), (0, h, 0, w), fields_)


def build_rig(frame: np.ndarray, landmarks: np.ndarray, cfg: RigConfig | None = None) -> FaceRig:
    """Precompute everything per avatar; rendering a pose is then a few array ops and one remap."""
    cfg = cfg if cfg is not None else RigConfig()
    size = (frame.shape[1], frame.shape[0])
    ff = _FaceFrame(landmarks.astype(np.float64))
    up, lo = _control_displacements(ff, cfg)
    mesh = ff.pts[:MESH_VERTICES]
    box = _box_around(mesh, 0.3 * ff.face_height, size)
    K = len(FACE_CONTROLS)
    # Interpolate every control at once: values [N, 2K] over mesh vertices + still anchors.
    points = np.concatenate([mesh, _anchor_ring(ff, size)])
    still = np.zeros((len(points) - len(mesh), 2 * K))
    shape = (box[1] - box[0], box[3] - box[2], K, 2)
    field_up = _interpolate_fields(points, np.concatenate([up.transpose(1, 0, 2).reshape(len(mesh), -1), still]), box, cfg).reshape(shape)
    field_lo = _interpolate_fields(points, np.concatenate([lo.transpose(1, 0, 2).reshape(len(mesh), -1), still]), box, cfg).reshape(shape)
    tear = _tear_mask(ff, box)[:, :, None, None]
    face_fields = (field_up * (1 - tear) + field_lo * tear).transpose(2, 0, 1, 3).astype(np.float32)
    eyes = {
        name: build_eyelid(ff.pts, upper, lower, brow[5:], ff.mouth_center, ff.u, ff.v, size, cfg.lower_lid_lift, cfg.lid_skin_bias)
        for name, upper, lower, brow in (
            ("blink_right", EYE_R_UPPER, EYE_R_LOWER, BROW_R),
            ("blink_left", EYE_L_UPPER, EYE_L_LOWER, BROW_L),
        )
    }
    return FaceRig(
        frame=frame,
        landmarks=landmarks.astype(np.float32),
        face=_trim(FieldGroup(FACE_CONTROLS, box, np.ascontiguousarray(face_fields))),
        head=_trim(_head_fields(ff, size, cfg)),
        mouth=_mouth_gap(frame, ff, field_up, field_lo, box),
        eyes=eyes,
        face_height=ff.face_height,
    )


def _mouth_gap(frame: np.ndarray, ff: _FaceFrame, field_up: np.ndarray, field_lo: np.ndarray, box: tuple[int, int, int, int]) -> MouthGap:
    """The tear line and how each control moves it on either side (sampled from the smoothed
    fields, so the painted gap matches the warped lips), plus the photo's lighting."""
    import cv2

    edge = _resample_polyline(ff.pts[LIPS_LOWER_INNER], 25)
    mx = (edge[:, 0] - box[2]).astype(np.float32).reshape(1, -1)
    my = (edge[:, 1] - box[0]).astype(np.float32).reshape(1, -1)

    def along_edge(field: np.ndarray) -> np.ndarray:
        per_control = [cv2.remap(np.ascontiguousarray(field[:, :, k]), mx, my, cv2.INTER_LINEAR)[0] for k in range(field.shape[2])]
        return _smooth_along(np.stack(per_control))

    disp_up, disp_lo = along_edge(field_up), along_edge(field_lo)
    # The corners of the tear do not open.
    disp_up[:, [0, -1]] = disp_lo[:, [0, -1]] = (disp_up[:, [0, -1]] + disp_lo[:, [0, -1]]) / 2
    nose_x, nose_y = np.round(ff.pts[NOSE_TIP]).astype(int)
    skin = frame[max(0, nose_y - 3) : nose_y + 3, max(0, nose_x - 3) : nose_x + 3].reshape(-1, 3).astype(np.float32)
    skin_rgb = np.median(skin, axis=0) if len(skin) else np.float32([200, 160, 140])
    lips_apart = float(np.linalg.norm(ff.pts[13] - ff.pts[14]))
    return MouthGap(
        edge=edge.astype(np.float32),
        disp_upper=disp_up,
        disp_lower=disp_lo,
        width=ff.mouth_width,
        photo_mouth_open=lips_apart > 0.08 * ff.mouth_width,
        skin_luma=float(skin_rgb @ np.float32([0.299, 0.587, 0.114])),
        skin_rgb=skin_rgb.astype(np.float32),
    )


def _trim(group: FieldGroup, epsilon: float = 0.01) -> FieldGroup:
    """Shrink a group's box to where its fields move anything (less work per frame)."""
    moving = np.abs(group.fields).max(axis=(0, 3)) > epsilon
    rows, cols = np.flatnonzero(moving.any(1)), np.flatnonzero(moving.any(0))
    if len(rows) == 0:
        rows = cols = np.array([0])
    r0, r1, c0, c1 = rows[0], rows[-1] + 2, cols[0], cols[-1] + 2
    y0, _, x0, _ = group.box
    fields_ = np.ascontiguousarray(group.fields[:, r0:r1, c0:c1])
    return FieldGroup(group.names, (y0 + r0, y0 + r0 + fields_.shape[1], x0 + c0, x0 + c0 + fields_.shape[2]), fields_)


def _smooth_along(disp: np.ndarray) -> np.ndarray:
    """Smooth displacements [K, n, 2] along the polyline (the lip edge should not zig-zag)."""
    kernel = np.float32([1, 2, 3, 2, 1]) / 9.0
    padded = np.concatenate([disp[:, :1].repeat(2, 1), disp, disp[:, -1:].repeat(2, 1)], axis=1)
    return sum(kernel[i] * padded[:, i : i + disp.shape[1]] for i in range(5)).astype(np.float32)


def _resample_polyline(points: np.ndarray, n: int) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], axis=-1)
