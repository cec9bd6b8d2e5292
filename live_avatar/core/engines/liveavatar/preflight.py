"""Will a liveavatar configuration fit a GPU and hold real time? Answered before anything loads.

``estimate(PreflightRequest(...))`` reads the measured H200 figures shipped in
``configs/preflight/liveavatar.yaml`` (weights memory, per-session state and block time per frame size
and mode, the live overhead factor, a table of known GPUs) and returns a :class:`PreflightEstimate`:
whether weights + one session's state fit, how many sessions fit (by memory AND by compute: sessions
share the GPU), the expected fps, and, when the answer is no, the nearest size of the same aspect that
works. Sizes between measured points are interpolated by latent tokens per frame ((H/16)*(W/16)),
outside them extrapolated. A GPU with fp8-compiled points of its own (``gpu:`` on a point) takes its block
times from them; other GPUs are scaled from the H200 (DiT time by bf16 TFLOP/s, the rest of the block by
memory bandwidth). Everything here is an estimate and says so.

No torch here: ``avatar preflight`` runs on a machine without a GPU, and ``avatar serve`` calls
:func:`estimate` before it loads the engine.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from live_avatar.core.config_loading import ConfigError, from_mapping, read_yaml_mapping
from live_avatar.core.contract import LOW_COMPUTE_MARGIN
from live_avatar.resources import config_path

from .audio_window import MAX_LOOKAHEAD_S, lookahead_samples
from .options import LiveAvatarOptions, frame_size

TABLE_PATH = config_path("preflight", "liveavatar.yaml")
FRAMES_PER_BLOCK = 12
LATENTS_PER_BLOCK = 3  # the VAE decodes them one by one; the live session sends each one's 4 frames when ready
TARGET_FPS = 25.0
BLOCK_VIDEO_MS = 1000.0 * FRAMES_PER_BLOCK / TARGET_FPS  # 480 ms of video per block
BASE_MODE = "fp8-compiled"
# one latent block + audio tokens (~0.4 MB) between two ranks through host memory; an assumption until the
# pipeline bench (avatar bench liveavatar --num_gpus_dit N) measures it on GPUs
PIPELINE_HANDOFF_MS = 2.0
# the server's playout margin at its floor (sessions.min_margin_ms): what the adaptive margin keeps under
# the lowest 2 % of the frames' slack
PLAYOUT_MARGIN_MS = 30.0
AUDIO_SAMPLE_RATE = 16000  # the audio features' rate (AudioFeatureConfig.sample_rate)
# what a viewer adds after the server sends a frame, as measured: an aiortc peer on the GPU machine 46-67 ms
# (speech-to-lips at the peer minus the server's, bench/results/e2e_liveavatar_h*.json), headless
# Chromium 46-63 ms p50 from a frame's last packet to the screen (bench/results/browser_view.json)
VIEWER_MS = (45.0, 70.0)
# speech-to-lips a viewer should not exceed in conversation (issue 8's target at the peer): over it, the
# preflight says what the lookahead costs
CONVERSATIONAL_MS = 1000.0


class PreflightError(ValueError):
    """A request preflight cannot answer (bad size, unknown GPU, ...): a one-line, user-facing message."""


@dataclass(frozen=True)
class MeasuredPoint:
    frame: tuple[int, int]  # (width, height)
    block_ms: float  # median direct block time (12 frames)
    dit_ms: float
    vae_ms: float
    state_gb: float  # per-session GPU state
    measured: str  # date
    command: str
    fp8_compiled_block_ms: float | None = None  # the fp8-compiled block of the same run (modes other than fp8-compiled)
    gpu: str | None = None  # measured on this known GPU; None: the table's reference GPU

    @property
    def tokens(self) -> int:
        return latent_tokens(self.frame)


@dataclass(frozen=True)
class ModeTable:
    description: str
    points: list[MeasuredPoint]  # on the reference GPU (load_table moves the others to other_gpus)
    # fp8-compiled only: GPU name -> its own measured points, which replace the scaling from the reference
    other_gpus: dict[str, list[MeasuredPoint]] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightsTable:
    bf16_gb: float
    fp8_gb: float
    text_encoder_gb: float
    source: str


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gb: float
    bf16_tflops: float
    bandwidth_tbs: float
    fp8: bool
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PreflightTable:
    reference_gpu: str
    live_factor: float
    headroom_gb: float
    smallest_suggested_tokens: int
    weights: WeightsTable
    modes: dict[str, Any]  # mode name -> ModeTable (converted in load_table)
    gpus: list[GpuSpec]

    def __post_init__(self) -> None:
        if self.live_factor < 1.0:
            raise ValueError("live_factor must be >= 1")


@functools.lru_cache(maxsize=4)
def load_table(path: str | Path = TABLE_PATH) -> PreflightTable:
    source = Path(path).name
    table = from_mapping(PreflightTable, read_yaml_mapping(path), source)
    modes = {name: from_mapping(ModeTable, value, source, f"modes.{name}") for name, value in table.modes.items()}
    for name in ("fp8-compiled", "compiled", "fp8-eager", "eager"):
        if not modes.get(name) or not modes[name].points:
            raise ConfigError("needs measured points", source, f"modes.{name}")
    for name, mode in modes.items():
        if name != BASE_MODE and any(p.fp8_compiled_block_ms is None for p in mode.points):
            raise ConfigError("every point needs fp8_compiled_block_ms (the ratio's base)", source, f"modes.{name}")
    reference = find_gpu(table.reference_gpu, table).name
    sorted_modes = {}
    for name, mode in modes.items():
        by_gpu: dict[str, list[MeasuredPoint]] = {}
        for i, point in enumerate(mode.points):
            try:
                gpu = find_gpu(point.gpu, table).name if point.gpu else reference
            except PreflightError as exc:
                raise ConfigError(str(exc), source, f"modes.{name}.points[{i}].gpu") from None
            if any(p.frame == point.frame for p in by_gpu.get(gpu, [])):
                raise ConfigError(f"{point.frame[0]}x{point.frame[1]} on the {gpu} twice", source, f"modes.{name}.points[{i}]")
            by_gpu.setdefault(gpu, []).append(point)
        if name != BASE_MODE and set(by_gpu) != {reference}:
            raise ConfigError(f"only {BASE_MODE} takes points measured on other GPUs", source, f"modes.{name}")
        if not by_gpu.get(reference):
            raise ConfigError(f"needs points measured on the reference GPU ({reference})", source, f"modes.{name}")
        ordered = {gpu: sorted(points, key=lambda p: p.tokens) for gpu, points in by_gpu.items()}
        sorted_modes[name] = ModeTable(mode.description, ordered.pop(reference), ordered)
    object.__setattr__(table, "modes", sorted_modes)
    return table


def latent_tokens(frame: tuple[int, int]) -> int:
    width, height = frame
    return (width // 16) * (height // 16)


def _normalise(name: str) -> str:
    text = "".join(c for c in name.lower() if c.isalnum())
    for word in ("nvidia", "geforce"):
        text = text.replace(word, "")
    return text


def find_gpu(name: str, table: PreflightTable | None = None) -> GpuSpec:
    table = table or load_table()
    wanted = _normalise(name)
    for gpu in table.gpus:
        if wanted in {_normalise(n) for n in [gpu.name, *gpu.aliases]}:
            return gpu
    known = ", ".join(g.name for g in table.gpus)
    raise PreflightError(f"unknown GPU {name!r}; known: {known} (for another GPU give --gpu-memory GB: its speed is then taken as the H200's)")


def _interpolate(points: list[tuple[int, float]], tokens: int) -> tuple[float, str]:
    """Linear in tokens between measured points; the nearest segment's line outside them."""
    if len(points) == 1:
        (t0, v0), = points
        return v0 * tokens / t0, ("measured" if tokens == t0 else "extrapolated")
    for t, v in points:
        if t == tokens:
            return v, "measured"
    if tokens < points[0][0]:
        (t0, v0), (t1, v1), kind = points[0], points[1], "extrapolated"
    elif tokens > points[-1][0]:
        (t0, v0), (t1, v1), kind = points[-2], points[-1], "extrapolated"
    else:
        i = next(i for i, (t, _) in enumerate(points) if t > tokens)
        (t0, v0), (t1, v1), kind = points[i - 1], points[i], "interpolated"
    value = v0 + (v1 - v0) * (tokens - t0) / (t1 - t0)
    return max(value, v0 * tokens / t0 * 0.5), kind  # never below half the proportional value


def _clamped_ratio(points: list[tuple[int, float]], tokens: int) -> float:
    if tokens <= points[0][0]:
        return points[0][1]
    if tokens >= points[-1][0]:
        return points[-1][1]
    return _interpolate(points, tokens)[0]


def mode_name(fp8: bool, compiled: bool) -> str:
    return ("fp8-" if fp8 else "") + ("compiled" if compiled else "eager")


@dataclass(frozen=True)
class PreflightRequest:
    size: str
    aspect: str = "9:16"
    fp8: bool = False
    compiled: bool = True
    # compiled modes: the VAE decoder compiled too (compile_vae), as the table's compiled figures were
    # measured; False adds what the eager decoder measured over the compiled one
    compiled_vae: bool = True
    gpu: str | None = None  # a known GPU name; None: the reference H200 unless gpu_memory_gb is given
    gpu_memory_gb: float | None = None
    gpus: int = 1
    live_factor: float | None = None  # None: the table's
    text_encoder: bool = True  # a real checkpoint holds umT5-XXL on the GPU (unless text_encoder_device=cpu); random weights do not
    kv_layout: str = "contiguous"  # "compact": one sink copy instead of one per step (the table measured contiguous)
    lookahead_s: float | None = None  # the live window's audio past its block; None: the engine's default
    # a suggested size keeps this share of a block's budget free (LOW_COMPUTE_MARGIN: under it the server warns, and
    # a slower card of the same name or any hiccup costs frames); a size asked for is judged at 25 fps only
    suggest_margin: float = LOW_COMPUTE_MARGIN


@dataclass
class PreflightEstimate:
    size: str
    aspect: str
    frame: tuple[int, int]
    tokens: int
    mode: str
    gpu: str  # a known GPU's name, or "GPU not named (--gpu)"
    gpu_memory_gb: float
    gpus: int
    weights_gb: float
    weights_detail: str
    per_session_gb: float
    headroom_gb: float
    block_ms: float  # direct block time on this GPU (estimated)
    live_factor: float
    expected_fps: float  # one session alone, live
    sessions_by_memory: int  # per GPU
    sessions_by_compute: int  # per GPU
    sessions: int  # all GPUs
    fits: bool  # weights + one session's state fit
    realtime: bool  # one session reaches 25 fps
    # speech-to-lips at the server, at best: every frame goes out a fixed delay after its audio, and a
    # block's first frame waits for the block's last audio (480 ms) + the lookahead, then the block (up
    # to its first frames)
    speech_to_lips_floor_ms: float
    lookahead_ms: float
    lookahead_s: float  # the engine option as asked (lookahead_ms is what the live window then holds)
    basis: dict[str, str]
    notes: list[str]
    suggestion: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.fits and self.realtime

    @property
    def compute_margin(self) -> float:
        """The share of a block's real-time budget left free by one session's live block."""
        return 1.0 - self.block_ms * self.live_factor / BLOCK_VIDEO_MS

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "fits": self.fits, "realtime": self.realtime, "sessions": self.sessions,
            "sessions_by_memory_per_gpu": self.sessions_by_memory, "sessions_by_compute_per_gpu": self.sessions_by_compute,
            "expected_fps": round(self.expected_fps, 1), "target_fps": TARGET_FPS,
            "compute_margin_pct": round(100 * self.compute_margin, 1),
            "speech_to_lips_floor_ms": round(self.speech_to_lips_floor_ms), "lookahead_ms": self.lookahead_ms,
            "lookahead_s": self.lookahead_s,
            "weights_gb": round(self.weights_gb, 2), "per_session_gb": round(self.per_session_gb, 2),
            "headroom_gb": self.headroom_gb, "gpu_memory_gb": round(self.gpu_memory_gb, 1),
            "block_ms": round(self.block_ms, 1), "live_block_ms": round(self.block_ms * self.live_factor, 1),
            "live_factor": self.live_factor, "size": self.size, "aspect": self.aspect, "frame": list(self.frame),
            "tokens_per_latent_frame": self.tokens, "mode": self.mode, "gpu": self.gpu, "gpus": self.gpus,
            "basis": self.basis, "notes": self.notes, "suggestion": self.suggestion,
        }


def estimate(request: PreflightRequest, table: PreflightTable | None = None, *, suggest: bool = True) -> PreflightEstimate:
    table = table or load_table()
    if request.gpus < 1:
        raise PreflightError(f"--gpus must be >= 1, got {request.gpus}")
    if request.kv_layout not in ("contiguous", "compact"):
        raise PreflightError(f"--kv-layout must be 'contiguous' or 'compact', got {request.kv_layout!r}")
    if request.gpu_memory_gb is not None and not request.gpu_memory_gb > 0:
        raise PreflightError(f"--gpu-memory must be a positive number of GB, got {request.gpu_memory_gb}")
    live_factor = table.live_factor if request.live_factor is None else request.live_factor
    if live_factor < 1.0:
        raise PreflightError(f"--live-factor must be >= 1, got {live_factor}")
    if not 0.0 <= request.suggest_margin < 1.0:
        raise PreflightError(f"--margin must be 0 to 0.99 (a share of the block's budget), got {request.suggest_margin:g}")
    if request.lookahead_s is not None and not 0.0 <= request.lookahead_s <= MAX_LOOKAHEAD_S:
        raise PreflightError(f"--lookahead (engine option lookahead_s) must be 0 to {MAX_LOOKAHEAD_S:g} s, got {request.lookahead_s:g}")
    try:
        frame = frame_size(request.size, request.aspect)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None
    reference = find_gpu(table.reference_gpu, table)
    gpu = find_gpu(request.gpu, table) if request.gpu else (None if request.gpu_memory_gb is not None else reference)
    if request.fp8 and gpu is not None and not gpu.fp8:
        raise PreflightError(f"--fp8: the {gpu.name} has no FP8 tensor cores (the FP8 DiT needs Ada, Hopper or newer)")
    result = _evaluate(table, request, frame, request.fp8, request.compiled, gpu, reference, live_factor)
    if suggest and (not result.ok or result.compute_margin < request.suggest_margin):
        result.suggestion = _suggest(table, request, result, gpu, reference, live_factor)
    return result


def _evaluate(table: PreflightTable, request: PreflightRequest, frame: tuple[int, int], fp8: bool, compiled: bool,
              gpu: GpuSpec | None, reference: GpuSpec, live_factor: float) -> PreflightEstimate:
    tokens = latent_tokens(frame)
    base = table.modes[BASE_MODE].points
    mode = mode_name(fp8, compiled)
    state_gb, state_kind = _interpolate([(p.tokens, p.state_gb) for p in base], tokens)
    own = _own_points(table, gpu, tokens)
    timed = own or base  # the curve the block time comes from
    block_ms, timing_kind = _interpolate([(p.tokens, p.block_ms) for p in timed], tokens)
    if own:
        timing_kind += f" on the {gpu.name}"
    dit_share = _clamped_ratio([(p.tokens, p.dit_ms / p.block_ms) for p in timed], tokens)
    if mode != BASE_MODE:
        points = table.modes[mode].points
        # on a GPU with its own curve, the reference's figure for this mode would be the wrong GPU's: the ratio
        exact = None if own else next((p for p in points if p.tokens == tokens), None)
        if exact is not None:
            block_ms, timing_kind = exact.block_ms, "measured"
        else:
            block_ms *= _clamped_ratio([(p.tokens, p.block_ms / p.fp8_compiled_block_ms) for p in points], tokens)
            timing_kind = f"estimated ({BASE_MODE} {timing_kind} x the {mode}/{BASE_MODE} ratio measured at "
            timing_kind += ", ".join(f"{p.frame[0]}x{p.frame[1]}" for p in points) + ")"
        dit_share = _clamped_ratio([(p.tokens, p.dit_ms / p.block_ms) for p in points], tokens)
    if compiled and not request.compiled_vae:
        block_ms, note = _with_eager_vae(table, mode, tokens, block_ms)
        timing_kind += f"; {note}"

    notes: list[str] = []
    if gpu is None:
        scaling = f"GPU speed unknown: the {reference.name} figures, unscaled (a slower GPU is slower)"
    elif own:
        scaling = (f"measured on the {gpu.name} ({BASE_MODE} at " + ", ".join(f"{p.frame[0]}x{p.frame[1]}" for p in own)
                   + f", {', '.join(sorted({p.measured for p in own}))}): no scaling"
                   + ("" if mode == BASE_MODE else f"; {mode} from the {reference.name}'s {mode}/{BASE_MODE} ratio"))
    elif gpu.name == reference.name:
        scaling = f"measured GPU ({reference.name}): no scaling"
    else:
        flops, bandwidth = reference.bf16_tflops / gpu.bf16_tflops, reference.bandwidth_tbs / gpu.bandwidth_tbs
        block_ms *= dit_share * flops + (1.0 - dit_share) * bandwidth
        scaling = (f"scaled from the {reference.name}: DiT ({dit_share:.0%} of the block) by bf16 dense TFLOP/s "
                   f"({reference.bf16_tflops:g} -> {gpu.bf16_tflops:g}), the rest by memory bandwidth "
                   f"({reference.bandwidth_tbs:g} -> {gpu.bandwidth_tbs:g} TB/s)")
    memory = request.gpu_memory_gb if request.gpu_memory_gb is not None else (gpu or reference).memory_gb

    if request.kv_layout == "compact":
        state_gb *= 1.0 - compact_state_saving(frame)
        state_kind += f"; kv_layout compact: {compact_state_saving(frame):.0%} less (computed from the layouts)"

    w = table.weights
    dit_gb = w.fp8_gb if fp8 else w.bf16_gb
    weights_gb = dit_gb + (w.text_encoder_gb if request.text_encoder else 0.0)
    detail = f"DiT {'FP8' if fp8 else 'bf16'} + VAE + wav2vec2 {dit_gb:.1f} (measured)"
    detail += f" + umT5-XXL encoder {w.text_encoder_gb:.1f}" if request.text_encoder else " (no text encoder on the GPU: random weights, or text_encoder_device=cpu)"
    pipelines = 1
    vae_share = _clamped_ratio([(p.tokens, p.vae_ms / p.block_ms) for p in (points if mode != BASE_MODE else timed)], tokens)
    # until a block's first frames exist: on one GPU they go out once the VAE has decoded the first of
    # the block's latent frames (generate_parts); on N GPUs the block passes every rank in turn (the same
    # work as on one, plus the hand-offs) and its frames come whole, so the pipeline raises throughput, not this
    if request.gpus == 1:
        trip_ms = block_ms * (1.0 - vae_share * (1.0 - 1.0 / LATENTS_PER_BLOCK)) * live_factor
    else:
        trip_ms = block_ms * live_factor + (request.gpus - 1) * PIPELINE_HANDOFF_MS
    # what the live window really holds: whole hops, at least the encoder's receptive field (0 -> 25 ms)
    lookahead_s = request.lookahead_s if request.lookahead_s is not None else default_lookahead_s()
    lookahead_ms = 1000.0 * lookahead_samples(lookahead_s, AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE
    if request.gpus > 1:  # the step pipeline: every rank holds the DiT and the KV rings of its own steps
        block_ms, state_gb, pipelines, note = _pipeline_estimate(request.gpus, block_ms, dit_share, vae_share, state_gb)
        notes.append(note)
    floor_ms = BLOCK_VIDEO_MS + lookahead_ms + trip_ms + PLAYOUT_MARGIN_MS
    shortest_ms = 1000.0 * lookahead_samples(0.0, AUDIO_SAMPLE_RATE) / AUDIO_SAMPLE_RATE
    if floor_ms + VIEWER_MS[0] > CONVERSATIONAL_MS and lookahead_ms > shortest_ms:
        # the A/B of the default against 0: bench/results/e2e_liveavatar_h100_lookahead_ab_dec06.json
        measured = (" (measured: 55-56 ms at 256x384 and 320x512 on an H100, 2026-12-06)"
                    if lookahead_s == default_lookahead_s() else "")
        notes.append(f"a viewer sees speech-to-lips over {CONVERSATIONAL_MS / 1000:g} s here; --lookahead 0 (engine option "
                     f"lookahead_s=0) takes {lookahead_ms - shortest_ms:.0f} ms off{measured}, the block's last frames "
                     "then encoded without right context")
    free = memory - table.headroom_gb - weights_gb
    by_memory = max(0, math.floor(free / state_gb)) if free > 0 else 0
    fps = 1000.0 * FRAMES_PER_BLOCK / (block_ms * live_factor)
    by_compute = math.floor(fps / TARGET_FPS + 1e-9)
    spans = [(curve, what) for kind, curve, what in ((state_kind, base, "memory"), (timing_kind, timed, "timing"))
             if "extrapolated" in kind]
    if len(spans) == 2 and spans[0][0] is spans[1][0]:  # both along the same curve: one note
        spans = [(base, "memory and timing")]
    for curve, what in spans:
        lo, hi = curve[0].frame, curve[-1].frame
        where = f" on the {gpu.name}" if curve is own else ""
        notes.append(f"{frame[0]}x{frame[1]} is outside the range measured{where} ({lo[0]}x{lo[1]} .. {hi[0]}x{hi[1]}): "
                     f"its {what} extrapolated")
    return PreflightEstimate(
        size=request.size, aspect=request.aspect, frame=frame, tokens=tokens, mode=mode,
        gpu=gpu.name if gpu else "GPU not named (--gpu)", gpu_memory_gb=memory, gpus=request.gpus,
        weights_gb=weights_gb, weights_detail=detail, per_session_gb=state_gb, headroom_gb=table.headroom_gb,
        block_ms=block_ms, live_factor=live_factor, expected_fps=fps, sessions_by_memory=by_memory,
        sessions_by_compute=by_compute,
        sessions=min(by_memory, by_compute) if request.gpus == 1 else min(by_memory, by_compute, 1) * pipelines,
        fits=by_memory >= 1, realtime=fps >= TARGET_FPS,
        speech_to_lips_floor_ms=floor_ms, lookahead_ms=lookahead_ms,
        lookahead_s=lookahead_s,
        basis={"memory": f"per-session state {state_kind}; weights measured (text encoder from its checkpoint size)",
               "timing": timing_kind, "gpu": scaling,
               "measurements": f"one {gpu.name if own else reference.name}, 14B random weights, avatar bench liveavatar, "
                               "medians of the timed blocks, " + ", ".join(sorted({p.measured for p in timed})),
               "live_factor": f"{live_factor:g} x the direct block time (live sessions with CUDA graphs measured "
                              "1.00-1.01x; 1.08-1.36x before)",
               "estimate": "an estimate from measured figures, not a measurement of this configuration"},
        notes=notes,
    )


def _own_points(table: PreflightTable, gpu: GpuSpec | None, tokens: int) -> list[MeasuredPoint]:
    """The GPU's own fp8-compiled points where they answer ``tokens``: an exact size, or two points or more
    (interpolated, or extrapolated along their nearest segment); otherwise [] (scale the reference's)."""
    points = table.modes[BASE_MODE].other_gpus.get(gpu.name, []) if gpu is not None else []
    if len(points) >= 2 or any(p.tokens == tokens for p in points):
        return points
    return []


def default_lookahead_s() -> float:
    """The engine option ``lookahead_s``'s default (without building options, which need weights)."""
    return next(f.default for f in dataclasses.fields(LiveAvatarOptions) if f.name == "lookahead_s")


def compact_state_saving(frame: tuple[int, int]) -> float:
    """The share of a session's state that kv_layout "compact" saves at ``frame`` (width, height): the
    contiguous layout keeps a copy of the sink's K and V beside each of the 4 steps' rings, plus the sink's
    un-rotated K; compact keeps the sink's K and V once. In token rows of one layer's K+V:
    contiguous 4 (S + R) + S/2 + text, compact 4 R + S + text."""
    from .config import DiTConfig, LatentGeometry, StreamingConfig

    streaming, geometry = StreamingConfig(), LatentGeometry.from_pixels(frame[1], frame[0])
    sink = geometry.sink_tokens(streaming)
    ring = streaming.ring_latent_frames * geometry.tokens_per_frame
    steps = streaming.num_steps
    contiguous = steps * (sink + ring) + sink / 2 + DiTConfig().text_len
    return (steps * sink + sink / 2 - sink) / contiguous


def _with_eager_vae(table: PreflightTable, mode: str, tokens: int, block_ms: float) -> tuple[float, str]:
    """A compiled mode's block with the VAE decoder eager: its compiled VAE time scaled by the eager mode's
    VAE over the compiled one, at the sizes the eager mode was measured (1.56-1.60x on the H200)."""
    base = [(p.tokens, p.vae_ms) for p in table.modes[BASE_MODE].points]
    ratio = _clamped_ratio([(p.tokens, p.vae_ms / _interpolate(base, p.tokens)[0]) for p in table.modes["eager"].points],
                           tokens)
    vae_ms = _interpolate([(p.tokens, p.vae_ms) for p in table.modes[mode].points], tokens)[0]
    return block_ms + vae_ms * (ratio - 1.0), f"VAE decoder eager (no compile_vae): +{vae_ms * (ratio - 1.0):.0f} ms"


def _pipeline_estimate(gpus: int, block_ms: float, dit_share: float, vae_share: float,
                       state_gb: float) -> tuple[float, float, int, str]:
    """(block ms of one session, state GB on the fullest rank, pipelines, note) for the step pipeline on ``gpus``
    devices: a step costs a quarter of the DiT share of the measured block; the slowest rank sets the pace."""
    from .pipeline.plan import StageCosts, plan_pipeline

    dit_ms, vae_ms = block_ms * dit_share, block_ms * vae_share
    costs = StageCosts(step=dit_ms / 4, vae=vae_ms, front=max(0.0, block_ms - dit_ms - vae_ms))
    plan = plan_pipeline(gpus, 4, costs=costs)
    first = plan.pipelines[0]
    loads = plan_pipeline(len(first.ranks), 4, costs=costs).loads(costs)  # one pipeline alone
    most_steps = max(len(steps) for steps in first.steps)
    note = (f"--gpus {gpus}: the step pipeline, {len(plan.pipelines)} pipeline(s) of {len(first.ranks)} GPU(s), one session "
            f"each ({plan.describe()}); a step is a quarter of the measured DiT time, {PIPELINE_HANDOFF_MS:g} ms "
            "per hand-off assumed; per-session memory is the fullest rank's rings")
    return max(loads) + PIPELINE_HANDOFF_MS, state_gb * most_steps / 4, len(plan.pipelines), note


def _candidate_frames(aspect: str, largest_tokens: int, smallest_tokens: int) -> list[tuple[int, int]]:
    """Frames of ``aspect`` the size rule makes, largest first, between the two token counts."""
    frames: set[tuple[int, int]] = set()
    for n in range(1, 1 + min(largest_tokens * 256 // 4096 + 1, 1024)):  # area caps in steps of 64*64
        frame = frame_size(f"{n * 4096}*1", aspect)
        if smallest_tokens <= latent_tokens(frame) <= largest_tokens:
            frames.add(frame)
    return sorted(frames, key=lambda f: (latent_tokens(f), f), reverse=True)


def _suggest(table: PreflightTable, request: PreflightRequest, result: PreflightEstimate, gpu: GpuSpec | None,
             reference: GpuSpec, live_factor: float) -> dict[str, Any]:
    """The largest frame of the same aspect that works with the margin asked for (request.suggest_margin), else
    at 25 fps with a thinner one, first with the requested options, then with FP8 and/or compile where those
    are not on; failing that, the memory the smallest working frame needs."""
    fp8_ok = gpu is None or gpu.fp8
    variants = [(request.fp8, request.compiled), (request.fp8 or fp8_ok, request.compiled), (request.fp8, True), (request.fp8 or fp8_ok, True)]
    variants = list(dict.fromkeys(variants))
    frames = _candidate_frames(request.aspect, result.tokens, table.smallest_suggested_tokens)
    if result.ok:  # asked for a size that holds 25 fps with too thin a margin: a smaller one that keeps it
        frames = [f for f in frames if latent_tokens(f) < result.tokens]
    # the options given first, even with a thinner margin: serve's size for a default must add no option
    margins = (request.suggest_margin,) if result.ok else tuple(dict.fromkeys((request.suggest_margin, 0.0)))
    for fp8, compiled in variants:
        for margin in margins:
            for frame in frames:
                r = _evaluate(table, request, frame, fp8, compiled, gpu, reference, live_factor)
                if r.ok and r.compute_margin >= margin:
                    return _suggestion(r, request, fp8, compiled)
    if result.ok:
        return None  # no smaller size keeps the margin: nothing better to say
    fp8, compiled = variants[-1]
    for frame in reversed(frames):  # smallest first: the least memory that holds real time
        r = _evaluate(table, request, frame, fp8, compiled, gpu, reference, live_factor)
        if r.realtime:
            needed = r.weights_gb + r.per_session_gb + r.headroom_gb
            s = _suggestion(r, request, fp8, compiled)
            s.update(size=None, sessions=None, smallest_size=s["size"], works_on_this_gpu=False, needs_gpu_memory_gb=round(needed, 1),
                     text=f"no {request.aspect} size fits {result.gpu_memory_gb:g} GB: the smallest that holds real time, "
                          f"{s['text']}, needs about {needed:.0f} GB per GPU")
            return s
    return {"size": None, "works_on_this_gpu": False,
            "text": f"no {request.aspect} size down to {table.smallest_suggested_tokens} latent tokens per frame holds real time on this GPU"}


def _suggestion(r: PreflightEstimate, request: PreflightRequest, fp8: bool, compiled: bool) -> dict[str, Any]:
    changes = []
    if fp8 and not request.fp8:
        changes.append("--fp8")
    if compiled and not request.compiled:
        changes.append("compiled (drop --eager)")
    size = f"{r.frame[0]}*{r.frame[1]}"
    timing = r.basis["timing"].split(" (")[0]  # measured, interpolated, extrapolated or estimated
    text = f"--size {size} --aspect {request.aspect}" + "".join(f" {c}" for c in changes)
    text += f" (frame {r.frame[0]}x{r.frame[1]}, {r.expected_fps:.1f} fps {timing}"
    text += f", {r.compute_margin:.0%} margin" if r.realtime else ""
    text += f", {r.sessions} session{'s' if r.sessions != 1 else ''})" if r.ok else ")"
    return {"size": size, "frame": list(r.frame), "aspect": request.aspect, "fp8": fp8, "compiled": compiled,
            "changes": changes, "works_on_this_gpu": True, "expected_fps": round(r.expected_fps, 1), "timing": timing,
            "compute_margin_pct": round(100 * r.compute_margin, 1),
            "margin_asked_pct": round(100 * request.suggest_margin, 1),
            "sessions": r.sessions, "weights_gb": round(r.weights_gb, 2), "per_session_gb": round(r.per_session_gb, 2), "text": text}


def engine_options_for(fp8: bool, compiled: bool, lookahead_s: float | None = None) -> str:
    """The serve flags that select a mode (and a lookahead other than the engine's default)."""
    opts = (["fp8=true"] if fp8 else []) + (["compile=true"] if compiled else [])  # compile_vae follows compile on CUDA
    if lookahead_s is not None and lookahead_s != default_lookahead_s():
        opts.append(f"lookahead_s={lookahead_s:g}")
    return " ".join(f"--engine-option {o}" for o in opts) or "(no engine options: the defaults are bf16 eager)"


def format_report(r: PreflightEstimate) -> str:
    w, h = r.frame
    gpus = f"{r.gpus} x " if r.gpus > 1 else ""
    lines = [
        f"liveavatar 14B, --size {r.size} --aspect {r.aspect}: frame {w}x{h} ({r.tokens} latent tokens per frame), mode {r.mode}",
        f"GPU: {gpus}{r.gpu}, {r.gpu_memory_gb:g} GB each",
        f"  weights            {r.weights_gb:6.1f} GB   {r.weights_detail}",
        f"  per session        {r.per_session_gb:6.1f} GB   (+ {r.headroom_gb:g} GB headroom)",
        f"  sessions by memory {r.sessions_by_memory:6d}      per GPU",
        (f"  block (12 frames)  {r.block_ms:6.0f} ms   direct; x{r.live_factor:g} live = {r.block_ms * r.live_factor:.0f} ms "
         f"for {BLOCK_VIDEO_MS:.0f} ms of video" + (f": {r.compute_margin:.0%} margin" if r.realtime else "")),
        f"  expected fps       {r.expected_fps:6.1f}      one session ({TARGET_FPS:g} needed for real time)",
        f"  sessions by compute{r.sessions_by_compute:6d}      per GPU (sessions share it: total fps / {TARGET_FPS:g})",
        f"  sessions           {r.sessions:6d}      {'in all' if r.gpus > 1 else ''}".rstrip(),
        (f"  speech to lips  >= {r.speech_to_lips_floor_ms / 1000:6.2f} s     at the server, at best: the block's audio "
         f"{BLOCK_VIDEO_MS:.0f} + lookahead {r.lookahead_ms:.0f} + "
         f"{'the block through the ranks' if r.gpus > 1 else 'the block to its first frames'} "
         f"{r.speech_to_lips_floor_ms - BLOCK_VIDEO_MS - r.lookahead_ms - PLAYOUT_MARGIN_MS:.0f}"
         f" + margin {PLAYOUT_MARGIN_MS:.0f} ms (a viewer adds ~{VIEWER_MS[0]:.0f}-{VIEWER_MS[1]:.0f} ms: "
         f"encode, network, its jitter buffer, decode)"),
    ]
    if r.ok:
        pipeline = f" --num_gpus_dit {r.gpus}" if r.gpus > 1 else ""
        lines.append(f"Answer: fits, {r.sessions} real-time session{'s' if r.sessions != 1 else ''} "
                     f"(serve with {engine_options_for(r.mode.startswith('fp8'), r.mode.endswith('compiled'), r.lookahead_s)}"
                     f"{pipeline}).")
    elif not r.fits:
        need = r.weights_gb + r.per_session_gb + r.headroom_gb
        lines.append(f"Answer: does not fit: weights + one session need {need:.1f} GB, the GPU has {r.gpu_memory_gb:g} GB"
                     + ("" if r.realtime else f", and it would run at {r.expected_fps:.1f} fps < {TARGET_FPS:g}") + ".")
    else:
        lines.append(f"Answer: fits in memory ({r.sessions_by_memory} session{'s' if r.sessions_by_memory != 1 else ''}) "
                     f"but cannot hold real time: {r.expected_fps:.1f} fps < {TARGET_FPS:g}.")
    if r.suggestion and r.ok:
        s = r.suggestion
        lines.append(f"Margin: {r.compute_margin:.0%} of the block's budget is under {s['margin_asked_pct']:g}%: the "
                     "server warns, and a slower card of the same name or any hiccup costs frames; the largest size "
                     f"that keeps it: {s['text']}.")
    elif r.suggestion:
        s = r.suggestion
        lines.append(("Nearest size that works: " if s.get("works_on_this_gpu") else "Suggestion: ") + s["text"] + ".")
    lines.extend(f"Note: {n}." for n in r.notes)
    lines.append("Basis (an estimate, not a measurement of this configuration):")
    lines.extend(f"  {key}: {r.basis[key]}" for key in ("measurements", "timing", "memory", "gpu", "live_factor"))
    return "\n".join(lines)
