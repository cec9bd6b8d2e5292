"""The lite engine: a talking portrait from one photo on a CPU (DESIGN.md §1, "engines/lite").

``LiteEngine.prepare_avatar`` finds the face, frames the photo and builds the rig once per image
(cached); ``new_generator`` gives a ``LiteGenerator`` per session that turns audio blocks into
frames: ``MotionModel`` (audio -> pose, stateful) then ``Renderer`` (pose -> frame, stateless).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from live_avatar.core.contract import AudioBlock, AvatarError
from live_avatar.core.engines.lite.config import LiteConfig, load_lite_config
from live_avatar.core.engines.lite.framing import plan_framing, render_framing
from live_avatar.core.engines.lite.landmarks import FaceLandmarks, find_face
from live_avatar.core.engines.lite.motion import MotionModel
from live_avatar.core.engines.lite.renderer import Renderer
from live_avatar.core.engines.lite.rig import FaceRig, Pose, build_rig
from live_avatar.core.portraits import validate_portrait

log = logging.getLogger(__name__)


@dataclass
class LiteAvatar:
    """A prepared portrait: the framed photo and its rig (read-only, shared by sessions)."""

    rig: FaceRig
    source_landmarks: FaceLandmarks
    key: str

    @property
    def frame(self) -> np.ndarray:
        return self.rig.frame

    @property
    def size(self) -> tuple[int, int]:
        return self.rig.size


class LiteGenerator:
    """One session's stateful block generator (contract.BlockGenerator); runs in a worker thread."""

    def __init__(self, avatar: LiteAvatar, config: LiteConfig, *, seed: int = 0):
        self.avatar = avatar
        self.config = config
        self.block_frames = config.block_frames
        self.samples_per_frame = config.sample_rate // config.fps
        self.seed = int(seed)
        self.motion = MotionModel(
            config.motion,
            fps=config.fps,
            sample_rate=config.sample_rate,
            face_height=avatar.rig.face_height,
            frame_height=avatar.size[1],
            seed=self.seed,
        )
        self.context_samples = self.motion.context_samples
        self.lookahead_samples = self.motion.lookahead_samples
        self.renderer = Renderer(avatar.rig, config.render)
        self.last_poses: list[Pose] = []  # poses of the last block (diagnostics, tests)
        self._fade_from: Renderer | None = None  # the previous portrait during a cross-fade
        self._fade_frames_done = 0
        self._closed = False

    def generate(self, block: AudioBlock) -> np.ndarray:
        if self._closed:
            raise RuntimeError("generator is closed")
        if block.context != self.context_samples or block.lookahead != self.lookahead_samples:
            raise ValueError(
                f"audio block has context/lookahead {block.context}/{block.lookahead}, "
                f"this generator needs {self.context_samples}/{self.lookahead_samples}"
            )
        S = self.samples_per_frame
        expected = block.context + block.num_frames * S + block.lookahead
        samples = np.nan_to_num(np.asarray(block.samples, np.float32).reshape(-1), nan=0.0, posinf=1.0, neginf=-1.0)
        if len(samples) != expected:
            raise ValueError(f"audio block has {len(samples)} samples, expected {expected}")
        if self.motion.state.frame_index != block.first_frame:
            # Frames were skipped (the runtime dropped a backlog): idle motion jumps ahead in time.
            self.motion.state.frame_index = block.first_frame
        width, height = self.avatar.size
        frames = np.empty((block.num_frames, height, width, 3), np.uint8)
        self.last_poses = []
        for i in range(block.num_frames):
            # Window of frame i: its own samples plus context before and lookahead after.
            window = samples[i * S : i * S + block.context + S + block.lookahead]
            pose = self.motion.step(window)
            self.last_poses.append(pose)
            frames[i] = self._render(pose)
        return frames

    def _render(self, pose: Pose) -> np.ndarray:
        frame = self.renderer.render(pose)
        if self._fade_from is None:
            return frame
        # the same pose on both portraits, blended: no frame jumps from one face to the other
        self._fade_frames_done += 1
        weight = self._fade_frames_done / (self.config.avatar_crossfade_frames + 1)
        old = self._fade_from.render(pose).astype(np.float32)
        frame = (old + (frame.astype(np.float32) - old) * weight + 0.5).astype(np.uint8)
        if self._fade_frames_done >= self.config.avatar_crossfade_frames:
            self._fade_from = None
        return frame

    def change_avatar(self, avatar: Any = None, prompt: str | None = None) -> int:
        """Mid-session portrait change (the lite engine has no prompt): motion carries on, the
        next ``avatar_crossfade_frames`` frames blend from the old portrait to the new one."""
        if avatar is None or avatar is self.avatar:
            return 0
        if not isinstance(avatar, LiteAvatar):
            raise AvatarError("the lite engine needs an avatar from LiteEngine.prepare_avatar")
        if avatar.size != self.avatar.size:
            raise AvatarError(f"the new portrait is {avatar.size}, this session renders {self.avatar.size}")
        self._fade_from = self.renderer if self.config.avatar_crossfade_frames > 0 else None
        self._fade_frames_done = 0
        self.avatar = avatar
        self.renderer = Renderer(avatar.rig, self.config.render)
        self.motion.face_height = avatar.rig.face_height
        return 0

    def reset_motion_to_idle(self) -> None:
        self.motion.go_idle()

    def state_dict(self) -> dict[str, Any]:
        return {"engine": "lite", "seed": self.seed, "avatar": self.avatar.key, "motion": self.motion.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("engine") != "lite" or "motion" not in state:
            raise ValueError("not a lite engine generator state")
        if state.get("avatar") not in (None, self.avatar.key):
            raise ValueError("this generator state was saved for a different portrait")
        self.seed = int(state.get("seed", self.seed))
        self.motion.load_state_dict(state["motion"])

    def close(self) -> None:
        self._closed = True


class LiteEngine:
    """contract.Engine for CPU machines: no model downloads, >= 25 fps per core at 512x512."""

    name = "lite"

    def __init__(self, **config: Any):
        config_path = config.pop("config_path", None)
        self.config: LiteConfig = (
            load_lite_config(config, config_path) if config_path else load_lite_config(config)
        )
        if self.config.cv2_threads is not None:
            import cv2

            cv2.setNumThreads(int(self.config.cv2_threads))
        self.fps = self.config.fps
        self.size = self.config.size
        self.block_frames = self.config.block_frames
        self.sample_rate = self.config.sample_rate
        self._capacity = self.config.capacity
        self._avatars: OrderedDict[str, LiteAvatar] = OrderedDict()
        self._lock = threading.Lock()

    # -- avatars -------------------------------------------------------------------------------
    def prepare_avatar(self, image: np.ndarray) -> LiteAvatar:
        image = validate_portrait(image)
        key = hashlib.sha1(image.tobytes() + repr(image.shape).encode()).hexdigest()[:16]
        with self._lock:
            if key in self._avatars:
                self._avatars.move_to_end(key)
                return self._avatars[key]
        landmarks = find_face(image, self.config.detection)
        framing = plan_framing(image.shape, landmarks.points, self.size, self.config.framing)
        frame = render_framing(image, framing)
        points = framing.apply(landmarks.points)
        if np.linalg.norm(points[291] - points[61]) < 8:
            raise AvatarError(f"the face is too small to animate at {self.size[0]}x{self.size[1]}; use a larger output size or a closer photo")
        try:
            rig = build_rig(frame, points, self.config.rig)
        except Exception as exc:  # degenerate landmark geometry (e.g. scipy's Qhull refusing it)
            log.info("rigging failed: %r", exc)
            raise AvatarError("the face could not be rigged (its landmarks are degenerate); use a clearer, frontal photo") from exc
        avatar = LiteAvatar(rig, landmarks, key)
        with self._lock:
            self._avatars[key] = avatar
            while len(self._avatars) > self.config.avatar_cache_size:
                self._avatars.popitem(last=False)
        return avatar

    # -- sessions ------------------------------------------------------------------------------
    def new_generator(self, avatar: Any, prompt: str | None = None, **options: Any) -> LiteGenerator:
        """``prompt`` is accepted for interface parity and ignored (the lite engine has no text control)."""
        if not isinstance(avatar, LiteAvatar):
            if isinstance(avatar, np.ndarray):
                avatar = self.prepare_avatar(avatar)
            else:
                raise AvatarError("the lite engine needs an avatar from LiteEngine.prepare_avatar (or an RGB image)")
        seed = options.pop("seed", self.config.seed)
        if options:
            raise ValueError(f"unknown generator option(s) for the lite engine: {', '.join(sorted(options))}")
        return LiteGenerator(avatar, self.config, seed=seed)

    def open_session(self, avatar: Any, prompt: str | None = None, **options: Any):
        from live_avatar.core.stream import (
            StreamSession,  # imported lazily: the runtime imports engines too
        )

        stream_config = options.pop("config", None)
        generator = self.new_generator(avatar, prompt, **options)
        return StreamSession(generator, fps=self.fps, sample_rate=self.sample_rate, config=stream_config)

    # -- capacity ------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Real-time sessions this process can hold: from config, else measured once on the
        default portrait (render cost per second of video vs. the cores this process may use)."""
        if self._capacity is None:
            seconds_per_second = self.measure_cost()
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            self._capacity = max(1, int(cores * self.config.cpu_budget / max(seconds_per_second, 1e-3)))
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._capacity = int(value)

    def measure_cost(self, frames: int = 25) -> float:
        """CPU seconds per second of video for one session (thread CPU time, default portrait)."""
        from live_avatar.core.portraits import default_portrait

        generator = self.new_generator(self.prepare_avatar(default_portrait()), seed=0)
        S = self.sample_rate // self.fps
        rng = np.random.default_rng(0)
        total = 0.0
        for first in range(0, frames, self.block_frames):
            n = self.block_frames
            samples = (0.1 * rng.standard_normal(generator.context_samples + n * S + generator.lookahead_samples)).astype(np.float32)
            block = AudioBlock(samples, first, n, generator.context_samples, generator.lookahead_samples, np.ones(n, bool))
            start = time.thread_time()
            generator.generate(block)
            total += time.thread_time() - start
        rendered = (frames + self.block_frames - 1) // self.block_frames * self.block_frames
        return total / (rendered / self.fps)

    def close(self) -> None:
        with self._lock:
            self._avatars.clear()
