"""Options of the liveavatar engine: ``LiveAvatarOptions`` (documented in :mod:`.engine`), device/dtype
resolution and the output frame size rule. Importing it does not import torch (``avatar preflight`` uses
the size rule on machines without it)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from live_avatar.core.config_loading import ConfigError, from_mapping

from .audio_window import MAX_LOOKAHEAD_S

if TYPE_CHECKING:
    import torch

DEFAULT_PROMPT = "A person is talking to the camera with natural facial expressions and head movements."


class EngineConfigError(ConfigError):
    """An engine option is unknown or invalid, or the weights folder is incomplete (user-facing)."""


@dataclass(frozen=True)
class LiveAvatarOptions:
    # a folder may be given as a path object too
    weights_dir: str | None = field(default=None, metadata={"parse": lambda v: os.fspath(v) if v is not None else None})
    tiny: bool = False
    random_weights: bool = False
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    compile_vae: bool | None = None  # None: with compile on a CUDA device (vae_compile_wanted)
    compile_mode: str | None = None  # torch.compile mode: None (default), "max-autotune-no-cudagraphs", "reduce-overhead" (CUDA graphs)
    compile_backend: str = "inductor"  # "eager": dynamo traces and counts graphs without code generation (tests)
    # inductor tunes its generated GPU kernels' launch configurations (coordinate descent) while compiling:
    # 1.4 % faster blocks for a 6x longer first compile on an H200 (engine.py)
    tune_kernels: bool = False
    warmup: bool | None = None  # None: warm up at start-up when compiling or on a GPU
    # the KV rings: "contiguous" (a sink copy beside each step's ring: one slice per attention) or
    # "compact" (one sink, concatenated per call: ~15 % less per-session state); None: the engine config's
    kv_layout: Literal["contiguous", "compact"] | None = None
    # where umT5-XXL (11.4 GB in bf16) runs: "auto" the engine's device, "cpu" keeps it off the GPU (a new
    # prompt then takes seconds to encode, outside the compute lock; prompts are cached)
    text_encoder_device: str = "auto"
    cuda_graphs: bool | None = None  # every DiT call as a CUDA graph (step_graphs.py); None: on CUDA devices
    # keep a closed session's stepper (KV rings, sink, CUDA graphs) for the next session at the same size:
    # no 16 graph captures and no ~31 GB allocation at its start; None: with cuda_graphs
    reuse_sessions: bool | None = None
    vae_graphs: bool = False  # with cuda_graphs, the VAE decoder's steady-state calls too (vae_stream.DecoderGraph)
    # the streaming VAE decoder channels-last (vae_stream.WanVaeCodec.use_channels_last); None: on CUDA devices
    vae_channels_last: bool | None = None
    overlap_vae: bool = False  # decode block k on a thread and CUDA stream of its own during block k+1's DiT (vae_overlap.py)
    # Python's GIL hand-over interval for the whole process while this engine runs (None: Python's 5 ms);
    # the DiT thread launches kernels under the GIL, so a long hand-over starves the GPU (see engine.py)
    gil_switch_interval_ms: float | None = None
    fp8: bool = False
    # FP8 scales (fp8.py): "tensor" per weight and activation matrix (spec 9), "row" per output channel
    # and per token (finer scales; measured no faster on an H200)
    fp8_scaling: Literal["tensor", "row"] = "tensor"
    size: str | None = None  # None: "704*384" (real), "128*64" (tiny)
    aspect: str = "9:16"
    prompt: str = DEFAULT_PROMPT
    seed: int = 420
    context_s: float = 2.0
    lookahead_s: float = 0.08  # see AudioFeatureConfig.lookahead_s
    sink_refresh: Literal["reencode", "keep_motion", "none"] = "keep_motion"
    capacity: int = 1
    config: str | None = None
    lora_path: str | None = None  # default: found in weights_dir; "none" skips the LoRA
    # step pipeline (issue 9, pipeline/): DiT devices, a device of its own for the VAE, every rank on one device
    num_gpus_dit: int = 1
    vae_gpu: bool = False
    share_device: bool = False
    pipeline_timeout_s: float = 120.0  # a block that takes longer than this on some rank ends the session

    def __post_init__(self) -> None:
        if sum([bool(self.weights_dir), bool(self.tiny), bool(self.random_weights)]) != 1:
            raise EngineConfigError(
                "the liveavatar engine needs exactly one of: --weights DIR (option weights_dir: the checkpoint "
                "folder), --tiny (random tiny models, CPU) or random_weights=True (14B with random weights, benchmarks)"
            )
        if self.capacity < 1:
            raise EngineConfigError("capacity must be >= 1")
        if self.gil_switch_interval_ms is not None and not 0.01 <= self.gil_switch_interval_ms <= 100:
            raise EngineConfigError("gil_switch_interval_ms must be between 0.01 and 100")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.text_encoder_device):
            raise EngineConfigError(f"text_encoder_device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.text_encoder_device!r}")
        if self.num_gpus_dit < 1:
            raise EngineConfigError(f"num_gpus_dit must be >= 1, got {self.num_gpus_dit}")
        if not 0.0 <= self.lookahead_s <= MAX_LOOKAHEAD_S:
            raise EngineConfigError(f"lookahead_s must be 0 to {MAX_LOOKAHEAD_S:g} s, got {self.lookahead_s:g}")
        if not self.context_s >= 0.0:
            raise EngineConfigError(f"context_s must be >= 0 s, got {self.context_s:g}")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> "LiveAvatarOptions":
        """From engine keyword options; ``weights`` is an alias of ``weights_dir``; None means "not given"."""
        options = {k: v for k, v in options.items() if v is not None}
        if "weights" in options:
            options.setdefault("weights_dir", options.pop("weights"))
        try:
            return from_mapping(cls, options, "liveavatar engine options")
        except ConfigError as exc:
            raise EngineConfigError(exc.problem, exc.source, exc.key) from None


def vae_compile_wanted(option: bool | None, compile_dit: bool, device_type: str) -> bool:
    """The engine option ``compile_vae``: as given, or (None) with ``compile`` on a CUDA device. The compiled
    decoder saves ~48 ms a 320x512 block on an H200 (126 -> 78 ms); its second-session recompiles are
    absorbed by the warm-up (warmup.py)."""
    return bool(option) if option is not None else (compile_dit and device_type == "cuda")


def vae_channels_last_wanted(option: bool | None, device_type: str) -> bool:
    """The engine option ``vae_channels_last``: as given, or (None) on a CUDA device, where cuDNN's
    convolutions want that layout (vae_stream.WanVaeCodec.use_channels_last)."""
    return bool(option) if option is not None else device_type == "cuda"


def detect_cuda_gpu(device: str) -> tuple[str, float] | None:
    """(name, memory GiB) of the CUDA device the engine would use, or None (no torch, no CUDA, a CPU
    device); for the start-up preflight check, before the engine loads."""
    try:
        import torch

        if device.startswith("cpu") or not torch.cuda.is_available():
            return None
        index = torch.device(device).index if device.startswith("cuda") else None
        props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
    except (ImportError, RuntimeError, ValueError, AssertionError):
        return None  # the engine reports a bad device itself
    return props.name, props.total_memory / 2**30


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise EngineConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError(f"device {name!r} requested but CUDA is not available (use device='cpu' with tiny=True)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}.get(name)
    if dtype is None:
        raise EngineConfigError(f"dtype must be 'auto', 'bfloat16' or 'float32', got {name!r}")
    return dtype


def _parse_aspect(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.replace("/", ":").split(":"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise EngineConfigError(f"aspect must look like '9:16' (width:height), got {text!r}") from None
    return w, h


def frame_size(size: str, aspect: str) -> tuple[int, int]:
    """(width, height): the reference --size rule (area cap, sides multiples of 64) for a frame of ``aspect``."""
    from live_avatar.core.offline.plan import PlanError, choose_size, parse_size

    aw, ah = _parse_aspect(aspect)
    try:
        w, h = parse_size(size)
        # a large frame of the requested aspect, so that the rule scales it down to the area cap
        k = math.ceil(4 * math.sqrt(w * h / (aw * ah)))
        return choose_size(aw * k, ah * k, w * h, divisor=64)
    except PlanError as exc:
        raise EngineConfigError(str(exc)) from None
