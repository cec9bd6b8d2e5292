"""Render a pose: sum the rig's displacement fields, invert, warp the photo, paint the mouth interior."""

from __future__ import annotations

import numpy as np

from live_avatar.core.engines.lite.config import RenderConfig
from live_avatar.core.engines.lite.rig import FACE_CONTROLS, FaceRig, Pose


class Renderer:
    """Stateless per frame: ``render(pose)`` depends on the pose only (so resuming is exact)."""

    def __init__(self, rig: FaceRig, cfg: RenderConfig | None = None):
        import cv2

        self.rig = rig
        cfg = cfg if cfg is not None else RenderConfig()  # one per renderer, never a shared default
        self.cfg = cfg
        self._cv2 = cv2
        boxes = np.array([rig.face.box, rig.head.box])
        self.box = (int(boxes[:, 0].min()), int(boxes[:, 1].max()), int(boxes[:, 2].min()), int(boxes[:, 3].max()))
        y0, y1, x0, x1 = self.box
        gy, gx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
        self._grid = np.ascontiguousarray(np.stack([gx, gy], -1))  # region-relative pixel coordinates
        self._grid_abs = self._grid + np.float32([x0, y0])  # frame pixel coordinates
        # Lighting of the painted mouth follows the face's brightness.
        self._light = float(np.clip(rig.mouth.skin_luma / 170.0, 0.35, 1.3))
        self._teeth_light = float(np.clip(self._light, 0.92, 1.05))  # teeth stay light in dim photos
        # Teeth are lighter and less saturated than the skin but lit by the same light: a mix of
        # the photo's skin colour and ivory keeps them in the photo's colour cast.
        skin = rig.mouth.skin_rgb.astype(np.float32)
        self._teeth_rgb = np.clip(0.45 * skin / max(self._light, 0.5) + 0.55 * np.float32(cfg.teeth_rgb), 0, 255).astype(np.float32)
        self._cavity_rgb = np.float32(cfg.cavity_rgb)
        self._tongue_rgb = np.float32(cfg.tongue_rgb)

    def _forward_field(self, pose: Pose) -> np.ndarray:
        y0, _, x0, _ = self.box
        total = np.zeros(self._grid.shape, np.float32)
        for group in (self.rig.head, self.rig.face):
            gy0, gy1, gx0, gx1 = group.box
            view = total[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0]
            for name, field in zip(group.names, group.fields, strict=True):
                weight = float(getattr(pose, name))
                if weight != 0.0:
                    view += weight * field
        return total

    def render(self, pose: Pose) -> np.ndarray:
        cv2 = self._cv2
        forward = self._forward_field(pose)
        # Backward map: output pixel q shows source s with s + F(s) = q, i.e. s = q - F(s), solved
        # by fixed-point iteration. Maps are interleaved (x, y) float32: remap takes them as one
        # 2-channel map without copies.
        back = np.negative(forward)
        at = np.empty_like(forward)
        for _ in range(self.cfg.fixed_point_iterations):
            np.add(self._grid, back, out=at)
            back = cv2.remap(forward, at, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            np.negative(back, out=back)
        source = np.add(self._grid_abs, back, out=at)
        warped = cv2.remap(self.rig.frame, source, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self._move_eyes(warped, source, pose)
        frame = self.rig.frame.copy()
        y0, y1, x0, x1 = self.box
        frame[y0:y1, x0:x1] = warped
        self._paint_mouth(frame, pose)
        return frame

    def _move_eyes(self, warped: np.ndarray, source: np.ndarray, pose: Pose) -> None:
        """Blink and gaze: the eyelid maps act on the source coordinates (after head motion, which
        moves the eyes). The lash line is an occluding edge, so each eye box is re-sampled 2x2
        per pixel and averaged (no stair-steps)."""
        cv2 = self._cv2
        y0, y1, x0, x1 = self.box
        gaze = (float(pose.gaze_x), float(pose.gaze_y))
        active = [
            (lid, min(max(float(getattr(pose, name)), 0.0), 1.0))
            for name, lid in self.rig.eyes.items()
            if float(getattr(pose, name)) > 1e-3 or any(gaze)
        ]
        if not active:
            return
        slack = int(np.ceil(abs(pose.head_x) + abs(pose.head_y) + abs(pose.head_roll) * 0.02 * self.rig.face_height
                            + abs(pose.head_scale) * self.rig.face_height + 2))
        for lid, _ in active:
            ey0, ey1, ex0, ex1 = lid.box
            sy0, sy1 = max(y0, ey0 - slack) - y0, min(y1, ey1 + slack) - y0
            sx0, sx1 = max(x0, ex0 - slack) - x0, min(x1, ex1 + slack) - x0
            if sy1 <= sy0 or sx1 <= sx0:
                continue
            h, w = sy1 - sy0, sx1 - sx0
            # Sample positions at +-1/4 pixel around each pixel centre.
            fine = cv2.resize(source[sy0:sy1, sx0:sx1], (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
            xs, ys = fine[:, :, 0], fine[:, :, 1]
            for other, closure in active:  # each map is the identity outside its own eye
                xs, ys = other.apply(xs, ys, closure, gaze)
            moved = np.abs(xs - fine[:, :, 0]) + np.abs(ys - fine[:, :, 1])
            fine[:, :, 0], fine[:, :, 1] = xs, ys
            sampled = cv2.remap(self.rig.frame, fine, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            resampled = cv2.resize(sampled, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
            # Only where the eye map moved anything; elsewhere the plain sampling stays (no box edge).
            weight = cv2.resize(np.clip(moved * 4.0, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)[:, :, None]
            box = warped[sy0:sy1, sx0:sx1].astype(np.float32)
            warped[sy0:sy1, sx0:sx1] = np.clip(box + weight * (resampled - box) + 0.5, 0, 255).astype(np.uint8)

    def _tear_edges(self, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """Where the top and bottom of the mouth gap are in this frame (frame pixels)."""
        mouth = self.rig.mouth
        weights = np.float32([getattr(pose, name) for name in FACE_CONTROLS])
        top = mouth.edge + np.tensordot(weights, mouth.disp_upper, axes=1)
        bottom = mouth.edge + np.tensordot(weights, mouth.disp_lower, axes=1)
        head = self._head_displacement(pose, mouth.edge)
        return top + head, bottom + head

    def _head_displacement(self, pose: Pose, points: np.ndarray) -> np.ndarray:
        group = self.rig.head
        y0, _, x0, _ = group.box
        out = np.zeros_like(points)
        for name, field in zip(group.names, group.fields, strict=True):
            weight = float(getattr(pose, name))
            if weight != 0.0:
                xs = np.clip(np.round(points[:, 0] - x0).astype(int), 0, field.shape[1] - 1)
                ys = np.clip(np.round(points[:, 1] - y0).astype(int), 0, field.shape[0] - 1)
                out += weight * field[ys, xs]
        return out

    def _paint_mouth(self, frame: np.ndarray, pose: Pose) -> None:
        """Dark cavity between the torn lips, upper teeth (if the photo shows none), lower teeth and
        tongue hints; edges feathered so there is no hard seam."""
        cv2 = self._cv2
        mouth = self.rig.mouth
        top, bottom = self._tear_edges(pose)
        opening = float(np.max(bottom[:, 1] - top[:, 1]))
        if opening < 0.4:
            return
        pad = 3
        x0 = int(np.floor(min(top[:, 0].min(), bottom[:, 0].min()))) - pad
        x1 = int(np.ceil(max(top[:, 0].max(), bottom[:, 0].max()))) + pad
        y0 = int(np.floor(top[:, 1].min())) - pad
        y1 = int(np.ceil(bottom[:, 1].max())) + pad
        h, w = frame.shape[:2]
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 <= x0 or y1 <= y0:
            return
        # Anti-aliased polygon at 4x sub-pixel precision, then a slight feather.
        shift = 2
        polygon = np.concatenate([top, bottom[::-1]]) - np.float32([x0, y0])
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [np.round(polygon * (1 << shift)).astype(np.int32)], 255, cv2.LINE_AA, shift)
        alpha = mask.astype(np.float32) / 255.0
        if self.cfg.mouth_feather_px > 0:
            alpha = cv2.GaussianBlur(alpha, (0, 0), self.cfg.mouth_feather_px)

        # Per column: top and bottom of the gap; per pixel: depth 0 (top) .. 1 (bottom).
        xs = np.arange(x0, x1, dtype=np.float32) + 0.5
        order_t, order_b = np.argsort(top[:, 0]), np.argsort(bottom[:, 0])
        col_top = np.interp(xs, top[order_t, 0], top[order_t, 1]) - y0
        col_bot = np.interp(xs, bottom[order_b, 0], bottom[order_b, 1]) - y0
        gap = np.maximum(col_bot - col_top, 0.5)
        ys = np.arange(y1 - y0, dtype=np.float32)[:, None] + 0.5
        below_top = ys - col_top[None, :]
        above_bottom = col_bot[None, :] - ys
        depth = np.clip(below_top / gap[None, :], 0, 1)
        # Across the mouth as it is now (corners move with round/spread): 1 at the centre, 0 at
        # the corners (darker, teeth fading out there).
        left_x, right_x = float(min(top[0, 0], top[-1, 0])), float(max(top[0, 0], top[-1, 0]))
        center_x = 0.5 * (left_x + right_x)
        half_width = max(0.5 * (right_x - left_x), 1.0)
        across = np.clip(1 - ((xs - center_x) / half_width) ** 2, 0, 1)[None, :]
        fade_in = np.clip(across / 0.2, 0, 1) ** 2  # teeth fade out towards the corners, no hard end

        M = mouth.width
        light = self._light
        color = np.empty((y1 - y0, x1 - x0, 3), np.float32)
        shade = (0.55 + 0.45 * across)[:, :, None]
        # Deeper (darker) towards the top, where the upper lip / teeth cast their shadow.
        color[:] = self._cavity_rgb * light * shade * (0.6 + 0.4 * depth)[:, :, None]
        # Tongue: lighter, low in the gap, only when the mouth is well open.
        tongue = np.clip((depth - 0.55) / 0.45, 0, 1) * np.clip((gap[None, :] - 0.12 * M) / (0.1 * M), 0, 1) * across
        color += (tongue[:, :, None] * 0.55) * (self._tongue_rgb * light * shade - color)
        # Teeth: a band under the top edge (when the photo shows no teeth of its own) and a thin
        # darker band above the bottom edge.
        if not mouth.photo_mouth_open:
            teeth_h = self.cfg.teeth_height * M * np.sqrt(across)
            upper_teeth = np.clip((teeth_h - below_top) / 1.2, 0, 1) * np.clip(below_top + 0.5, 0, 1) * fade_in
            # Gaps between teeth (incisors), the lip's shadow at the gum line, and
            # darker towards the corners where the teeth turn away.
            tooth_phase = ((xs - center_x) / (self.cfg.tooth_width * M)) % 1.0
            gaps = 1.0 - 0.09 * np.exp(-(((tooth_phase - 0.5) / 0.07) ** 2))
            gum_shadow = 0.72 + 0.28 * np.clip(below_top / max(0.04 * M, 1.0), 0, 1)
            tooth_shade = (0.55 + 0.45 * across) * gaps[None, :] * gum_shadow
            color += (upper_teeth[:, :, None] * 0.92) * (self._teeth_rgb * self._teeth_light * tooth_shade[:, :, None] - color)
        lower_h = self.cfg.lower_teeth_height * M * np.sqrt(across) * np.clip((gap[None, :] - 0.15 * M) / (0.1 * M), 0, 1)
        lower_teeth = np.clip((lower_h - above_bottom) / 1.2, 0, 1) * fade_in
        color += (lower_teeth[:, :, None] * 0.6) * (self._teeth_rgb * self._teeth_light * 0.8 * shade - color)

        region = frame[y0:y1, x0:x1].astype(np.float32)
        region += alpha[:, :, None] * (color - region)
        frame[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
