"""Blinks as an exact backward map, per eye.

A blink hides the eye under the upper lid: that is an occlusion, which a forward displacement
field cannot invert (all of the eyeball would map onto one line). So the eyelids get their own
closed-form backward map, applied to the source coordinates after the rest of the warp:
in face-aligned coordinates, per column across the eye,
  * between brow and the moving lash line, the lid skin stretches down;
  * between the lash line and the (slightly raised) lower lid, the eyeball shows, moved up with
    the lower lid and cut off by the lash line;
  * just under the lower lid, the skin follows its small rise and fades back to rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EyeLid:
    origin: np.ndarray  # float64 [2]: origin of the face-aligned frame (image pixels)
    u: np.ndarray  # unit vector across the face (to image right)
    v: np.ndarray  # unit vector down the face
    upper: tuple[np.ndarray, np.ndarray]  # lash line: (a sorted, b), face-aligned coordinates
    lower: tuple[np.ndarray, np.ndarray]  # lower lid edge
    brow: tuple[np.ndarray, np.ndarray]  # lower edge of the brow
    lift: float  # rise of the lower lid at a full blink, pixels
    skin_bias: float  # 0: stretch the lid evenly; towards 1: stretch the skin under the brow, not the lashes
    box: tuple[int, int, int, int]  # y0, y1, x0, x1: where the map differs from identity (source pixels)

    def apply(self, xs: np.ndarray, ys: np.ndarray, closure: float, gaze: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """Source coordinates (xs, ys) as seen with the eye open -> where to sample with the eye
        ``closure`` (0 open .. 1 closed) closed and the eyeball turned by ``gaze`` pixels
        (across, down the face)."""
        dx, dy = xs - self.origin[0], ys - self.origin[1]
        a = dx * self.u[0] + dy * self.u[1]
        b = dx * self.v[0] + dy * self.v[1]
        upper = np.interp(a, *self.upper)
        lower = np.interp(a, *self.lower)
        brow = np.minimum(np.interp(a, *self.brow), upper - 1.0)
        span = self.lower[0][-1] - self.lower[0][0]
        bump = np.sin(np.pi * np.clip((a - self.lower[0][0]) / max(span, 1e-6), 0, 1))
        inside = (a > self.lower[0][0]) & (a < self.lower[0][-1])
        lift = self.lift * closure * bump
        lower_now = lower - lift
        opening = np.maximum(lower_now - upper, 0)
        lash = upper + closure * opening  # where the lash line is now
        out = b.copy()
        skin = inside & (b >= brow) & (b < lash)
        # Position within the stretched lid, 0 at the brow .. 1 at the lash line, remapped so that
        # the clean skin under the brow stretches most and the dark lash band stays thin.
        t = (b[skin] - brow[skin]) / np.maximum(lash[skin] - brow[skin], 1e-6)
        k = self.skin_bias * closure
        out[skin] = brow[skin] + (t - k * t * (1 - t)) * (upper[skin] - brow[skin])
        eyeball = inside & (b >= lash) & (b < lower_now)
        out[eyeball] = b[eyeball] + lift[eyeball]
        shift_a = np.zeros_like(a)
        if gaze[0] or gaze[1]:
            # The eyeball content slides under the lids: fully in the middle of the opening,
            # not at all at the lids and corners, so nothing tears.
            height = np.maximum(lower_now - lash, 1e-6)[eyeball]
            taper = bump[eyeball] * np.sin(np.pi * np.clip((b[eyeball] - lash[eyeball]) / height, 0, 1))
            shift_a[eyeball] = -gaze[0] * taper
            out[eyeball] -= gaze[1] * taper
        band = 0.6 * max(float(np.max(self.lower[1] - np.interp(self.lower[0], *self.upper))), 2.0)
        below = inside & (b >= lower_now)
        fade = np.clip(1 - (b[below] - lower_now[below]) / band, 0, 1)
        out[below] = b[below] + lift[below] * fade
        new_b = out - b
        return xs + new_b * self.v[0] + shift_a * self.u[0], ys + new_b * self.v[1] + shift_a * self.u[1]


def build_eyelid(pts: np.ndarray, upper_ids: list[int], lower_ids: list[int], brow_ids: list[int],
                 origin: np.ndarray, u: np.ndarray, v: np.ndarray, size: tuple[int, int], lift_fraction: float = 0.12,
                 skin_bias: float = 0.6) -> EyeLid:
    def local(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        d = pts[ids] - origin
        a, b = d @ u, d @ v
        order = np.argsort(a)
        return a[order], b[order]

    upper, lower, brow = local(upper_ids), local(lower_ids), local(brow_ids)
    opening = float(np.max(np.interp(upper[0], *lower) - upper[1]))
    region = pts[upper_ids + lower_ids + brow_ids]
    margin = max(3.0, opening)
    w, h = size
    x0, y0 = np.floor(region.min(0) - margin).astype(int)
    x1, y1 = np.ceil(region.max(0) + margin).astype(int)
    box = (max(0, y0), min(h, y1), max(0, x0), min(w, x1))
    return EyeLid(origin, u, v, upper, lower, brow, lift_fraction * opening, skin_bias, box)
