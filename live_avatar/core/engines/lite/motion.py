"""Audio -> rig pose, frame by frame, with all motion state carried across blocks.

Mouth: opening from loudness relative to a running speech peak (so quiet and loud speakers both
articulate), reduced on hissy sounds; rounded vs spread from where the voiced energy sits in the
spectrum (low second formant -> o/u, high -> i/e). Smoothed with a fast attack and a slower release.
Idle life: seeded random blinks every few seconds, a slow random walk of the head that grows while
speaking, breathing. Everything lives in ``MotionState`` so a render can stop and resume exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from live_avatar.core.engines.lite.config import MotionConfig
from live_avatar.core.engines.lite.rig import Pose

_FFT_SIZE = 1024


@dataclass
class MotionState:
    frame_index: int = 0
    mouth_open: float = 0.0
    mouth_round: float = 0.0
    mouth_spread: float = 0.0
    speech_peak_db: float = -18.0
    recent_levels_db: list[float] = field(default_factory=list)  # for the noise floor
    speech_activity: float = 0.0  # slow envelope of speaking, 0..1
    centroid_mean_hz: float = 1300.0  # the speaker's typical spectral centroid (running mean)
    brow: float = 0.0
    open_slow: float = 0.0  # slow average of the mouth target (what counts as an emphasis)
    nod: float = 0.0
    next_blink_s: float = 0.0
    blink_start_s: float = -10.0
    blink_repeat: bool = False  # the current blink is the second of a double blink
    head_walk: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # x, y, roll: random walk
    head_smooth: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # low-passed walk
    breath_phase: float = 0.0
    gaze: list[float] = field(default_factory=lambda: [0.0, 0.0])  # current eye direction, -1..1
    gaze_target: list[float] = field(default_factory=lambda: [0.0, 0.0])
    next_gaze_s: float = 1.0
    rng: dict[str, Any] = field(default_factory=dict)  # numpy PCG64 state
    closing_frames: int = 0  # frames left of the fast release after an interrupt


@dataclass(frozen=True)
class FrameFeatures:
    level_db: float
    peak_db: float  # loudest 10 ms of the window: a syllable starting late in the frame already shows
    hiss: float  # share of energy above 3.5 kHz (fricatives: s, f, sh)
    centroid_hz: float  # spectral centroid of the 200-4000 Hz band (tracks the second formant)


def analyse_window(window: np.ndarray, sample_rate: int) -> FrameFeatures:
    """Loudness and coarse spectral shape of one analysis window."""
    x = np.asarray(window, np.float64)
    rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
    level_db = float(20 * np.log10(rms + 1e-9))
    hop = max(1, sample_rate // 100)
    if len(x) >= hop:
        blocks = x[len(x) - len(x) // hop * hop :].reshape(-1, hop)
        peak_db = float(10 * np.log10(float(np.max(np.mean(blocks * blocks, axis=1))) + 1e-18))
    else:
        peak_db = level_db
    if rms < 1e-6:
        return FrameFeatures(level_db, peak_db, 0.0, 0.0)
    n = min(len(x), _FFT_SIZE)
    spec = np.abs(np.fft.rfft(x[-n:] * np.hanning(n), _FFT_SIZE)) ** 2
    freqs = np.fft.rfftfreq(_FFT_SIZE, 1.0 / sample_rate)
    total = spec[freqs > 80].sum() + 1e-12
    hiss = float(spec[freqs > 3500].sum() / total)
    band = (freqs >= 200) & (freqs <= 4000)
    centroid = float((spec[band] * freqs[band]).sum() / (spec[band].sum() + 1e-12))
    return FrameFeatures(level_db, peak_db, hiss, centroid)


def _ease(t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return t * t * (3 - 2 * t)


class MotionModel:
    """Turns per-frame audio windows into poses. One instance per session (not thread-safe)."""

    def __init__(self, cfg: MotionConfig, *, fps: int, sample_rate: int, face_height: float, frame_height: int, seed: int):
        self.cfg = cfg
        self.fps = fps
        self.sample_rate = sample_rate
        self.samples_per_frame = sample_rate // fps
        self.context_samples = int(round(cfg.context_ms * sample_rate / 1000))
        self.lookahead_samples = int(round(cfg.lookahead_ms * sample_rate / 1000))
        self.face_height = face_height
        self.frame_scale = frame_height / 512.0
        self._seed = seed
        self.state = MotionState()
        self.reset(seed)

    # -- state ---------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._seed = seed
        self._rng = np.random.Generator(np.random.PCG64(self._seed))
        self.state = MotionState(speech_peak_db=self.cfg.initial_peak_db)
        self.state.next_blink_s = float(self._rng.uniform(0.6, self.cfg.blink_interval_s[1]))

    def state_dict(self) -> dict[str, Any]:
        self.state.rng = self._rng.bit_generator.state
        return dataclasses.asdict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(MotionState)}
        values = {k: v for k, v in state.items() if k in known}
        self.state = MotionState(**{**dataclasses.asdict(MotionState()), **values})
        self.state.head_walk = list(self.state.head_walk)
        self.state.recent_levels_db = [float(x) for x in self.state.recent_levels_db]
        self.state.head_smooth = list(self.state.head_smooth)
        self.state.gaze = list(self.state.gaze)
        self.state.gaze_target = list(self.state.gaze_target)
        self._rng = np.random.Generator(np.random.PCG64())
        if self.state.rng:
            self._rng.bit_generator.state = self.state.rng

    def go_idle(self) -> None:
        """After an interrupt: forget the speech envelope so the mouth closes and the head calms;
        for the next 0.2 s the mouth closes with the faster ``interrupt_release_ms``."""
        self.state.speech_activity *= 0.5
        self.state.closing_frames = max(1, round(0.2 * self.fps))

    # -- per frame -----------------------------------------------------------------------------
    def step(self, window: np.ndarray) -> Pose:
        cfg, s = self.cfg, self.state
        dt = 1.0 / self.fps
        t = s.frame_index * dt
        feats = analyse_window(window, self.sample_rate)
        # What drives the mouth: the window's level, or its loudest 10 ms less peak_weight_db when
        # that is louder (an onset late in the frame opens the mouth in this frame, not the next).
        drive_db = max(feats.level_db, feats.peak_db - cfg.peak_weight_db)

        # Mouth opening from loudness relative to the running speech peak.
        # Noise floor: the quietest frame of the last second or so (minimum statistics), so that a
        # steady hum or room noise never reads as speech.
        s.recent_levels_db = (s.recent_levels_db + [max(drive_db, -120.0)])[-int(cfg.noise_window_s * self.fps) :]
        floor_db = min(s.recent_levels_db)
        speaking = drive_db > max(cfg.silence_db, floor_db + cfg.noise_margin_db)
        if speaking:
            s.speech_peak_db = max(drive_db, s.speech_peak_db - cfg.peak_decay_db_per_s * dt)
            s.speech_peak_db = float(np.clip(s.speech_peak_db, -40.0, -3.0))
            bottom = max(s.speech_peak_db - cfg.level_range_db, floor_db + cfg.noise_margin_db)
            rel = (drive_db - bottom) / max(s.speech_peak_db - bottom, 3.0)
            target_open = float(np.clip(rel, 0, 1)) ** cfg.open_exponent * cfg.open_gain
            target_open *= 1.0 - cfg.hiss_closure * min(1.0, feats.hiss * 1.5)  # s, f, sh: teeth together
        else:
            target_open = 0.0
        tau = cfg.attack_ms if target_open > s.mouth_open else cfg.release_ms
        if s.closing_frames > 0:
            s.closing_frames -= 1
            tau = min(tau, cfg.interrupt_release_ms) if target_open <= s.mouth_open else tau
        s.mouth_open += (target_open - s.mouth_open) * (1 - np.exp(-1000 * dt / tau))
        # Vowel colour relative to this speaker's own average: a lower centroid than usual reads as
        # rounded (o, u), a higher one as spread (i, e).
        voiced_weight = min(1.0, target_open * 2.5) * (1.0 - min(1.0, feats.hiss * 2))
        if voiced_weight > 0.3:
            s.centroid_mean_hz += (feats.centroid_hz - s.centroid_mean_hz) * (1 - np.exp(-dt / cfg.centroid_adapt_s))
        offset = feats.centroid_hz - s.centroid_mean_hz
        target_round = float(np.clip(-offset / cfg.shape_hz, 0, 1)) * voiced_weight
        target_spread = float(np.clip(offset / cfg.shape_hz, 0, 1)) * voiced_weight
        a_shape = 1 - np.exp(-1000 * dt / cfg.shape_ms)
        s.mouth_round += (target_round - s.mouth_round) * a_shape
        s.mouth_spread += (target_spread - s.mouth_spread) * a_shape
        s.speech_activity += ((1.0 if target_open > 0.15 else 0.0) - s.speech_activity) * (1 - np.exp(-dt / cfg.activity_s))
        # Brows lift a little on loud syllables; stressed syllables (well above the recent average)
        # get a small nod.
        s.brow += (cfg.brow_speech_gain * max(0.0, target_open - 0.6) * 2 - s.brow) * (1 - np.exp(-dt / 0.25))
        s.open_slow += (target_open - s.open_slow) * (1 - np.exp(-dt / 0.5))
        emphasis = max(0.0, target_open - s.open_slow - 0.15)
        s.nod += (emphasis - s.nod) * (1 - np.exp(-dt / 0.12))

        blink = self._blink(t)
        gaze_x, gaze_y = self._gaze(t, dt)
        head_x, head_y, roll = self._head(dt)
        s.breath_phase = (s.breath_phase + 2 * np.pi * dt / cfg.breath_period_s) % (2 * np.pi)
        breath = float(np.sin(s.breath_phase))
        s.frame_index += 1
        shift = cfg.head_shift_fraction * self.face_height
        return Pose(
            mouth_open=float(s.mouth_open),
            mouth_round=float(np.clip(s.mouth_round, 0, 1)),
            mouth_spread=float(np.clip(s.mouth_spread, 0, 1)),
            blink_right=blink,
            blink_left=blink,
            gaze_x=float(gaze_x * cfg.gaze_fraction * self.face_height),
            gaze_y=float(gaze_y * cfg.gaze_fraction * self.face_height * 0.5),
            brow_raise=float(np.clip(s.brow, 0, 1)),
            head_x=float(head_x * shift),
            head_y=float(head_y * shift * 0.7 + s.nod * cfg.nod_fraction * self.face_height
                         - 0.35 * cfg.breath_px * self.frame_scale * breath),
            head_roll=float(roll * cfg.head_roll_deg),
            head_scale=0.0,
            chest_y=float(cfg.breath_px * self.frame_scale * breath),
        )

    def _blink(self, t: float) -> float:
        cfg, s = self.cfg, self.state
        if t >= s.next_blink_s:
            s.blink_start_s = s.next_blink_s
            lo, hi = cfg.blink_interval_s
            double = not s.blink_repeat and self._rng.random() < cfg.double_blink_probability
            s.blink_repeat = double
            if double:
                s.next_blink_s = s.blink_start_s + cfg.blink_close_s + cfg.blink_hold_s + cfg.blink_open_s + 0.12
            else:
                s.next_blink_s = s.blink_start_s + float(self._rng.uniform(lo, hi))
        u = t - s.blink_start_s
        close, hold, opening = cfg.blink_close_s, cfg.blink_hold_s, cfg.blink_open_s
        if u < 0 or u > close + hold + opening:
            return 0.0
        if u < close:
            return _ease(u / close)
        if u < close + hold:
            return 1.0
        return 1.0 - _ease((u - close - hold) / opening)

    def _gaze(self, t: float, dt: float) -> tuple[float, float]:
        """Saccades: now and then the eyes jump to a new point near the camera and rest there."""
        cfg, s = self.cfg, self.state
        if t >= s.next_gaze_s:
            lo, hi = cfg.gaze_interval_s
            s.next_gaze_s = t + float(self._rng.uniform(lo, hi))
            # Mostly back to the camera, sometimes a glance aside.
            if self._rng.random() < 0.5:
                s.gaze_target = [0.0, 0.0]
            else:
                s.gaze_target = [float(np.clip(x, -1, 1)) for x in self._rng.normal(0.0, 0.6, 2)]
        follow = 1 - np.exp(-dt / cfg.saccade_s)
        s.gaze = [g + (target - g) * follow for g, target in zip(s.gaze, s.gaze_target, strict=True)]
        return s.gaze[0], s.gaze[1]

    def _head(self, dt: float) -> tuple[float, float, float]:
        """A random walk pulled back to rest (unit variance), low-passed twice for smooth motion."""
        cfg, s = self.cfg, self.state
        decay = np.exp(-dt / cfg.head_time_s)
        kick = np.sqrt(1 - decay * decay)
        noise = self._rng.standard_normal(3)
        gain = 1.0 + (cfg.head_speech_gain - 1.0) * s.speech_activity
        smooth = 1 - np.exp(-dt / cfg.head_smooth_s)
        for i in range(3):
            s.head_walk[i] = float(s.head_walk[i] * decay + kick * noise[i])
            s.head_smooth[i] = float(s.head_smooth[i] + (s.head_walk[i] * gain - s.head_smooth[i]) * smooth)
        return s.head_smooth[0], s.head_smooth[1], s.head_smooth[2]
