"""Load the causal S2V DiT from the official checkpoint layout, merging the Live Avatar LoRA.

Checkpoint folder: ``config.json`` + ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` shards +
``diffusion_pytorch_model.safetensors.index.json`` (``weight_map``: key -> shard file). A single
``diffusion_pytorch_model.safetensors`` without an index is accepted too.

The model is built on the meta device and materialised one tensor at a time (read from its shard,
LoRA-merged in float32, cast, moved to the target device), so the process never holds a second full
copy. Every inconsistency raises :class:`WeightLoadError` naming the key and the file.

LoRA (spec section 8): PEFT names (``[base_model.model.]<module>.lora_A[.default].weight`` /
``lora_B``), merged as ``W + (alpha/rank) * B @ A``. Non-LoRA tensors in the LoRA file replace the
base weight of the same key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch
from safetensors import safe_open

from .config import DiTConfig, StreamingConfig
from .dit import FP32_MODULES, CausalS2VDiT
from .fp8 import quantize_fp8_

log = logging.getLogger(__name__)

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_NAME = "diffusion_pytorch_model.safetensors"
LORA_PREFIX = "base_model.model."


class WeightLoadError(RuntimeError):
    """A checkpoint or LoRA file is missing, incomplete or does not match the model."""


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPU, float32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def dtype_for_key(key: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if key.startswith(FP32_MODULES) else dtype


def build_meta_model(config: DiTConfig, streaming: StreamingConfig | None = None) -> CausalS2VDiT:
    """The model with every parameter on the meta device (no memory)."""
    buckets = (streaming or StreamingConfig()).framepack_buckets
    with torch.device("meta"):
        return CausalS2VDiT(config, buckets)


def _set_tensor(model: torch.nn.Module, key: str, value: torch.Tensor) -> None:
    module_name, _, name = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    setattr(module, name, torch.nn.Parameter(value, requires_grad=False))


def materialize_empty_(model: torch.nn.Module, device, dtype: torch.dtype) -> CausalS2VDiT:
    """Give every meta parameter uninitialised storage on ``device`` (dtype policy of FP32_MODULES)."""
    for key, param in list(model.named_parameters()):
        if param.is_meta:
            _set_tensor(model, key, torch.empty(param.shape, device=device, dtype=dtype_for_key(key, dtype)))
    return model


def _open_safetensors(path: Path, what: str = "shard"):
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise WeightLoadError(f"cannot read {what} {path}: {exc}") from None


# ---- LoRA ---------------------------------------------------------------------------------------

def _lora_base_key(key: str) -> tuple[str, str] | None:
    """``(base weight key, "A"|"B")`` of a PEFT LoRA tensor name, or None for a plain tensor."""
    if key.startswith(LORA_PREFIX):
        key = key[len(LORA_PREFIX):]
    for tag, which in ((".lora_A", "A"), (".lora_B", "B")):
        if tag in key:
            module = key.split(tag)[0]
            return module + ".weight", which
    return None


def read_lora(path: str | Path, model_shapes: dict[str, torch.Size], rank: int, alpha: float):
    """Parse a LoRA file into ``{base_key: (A, B, scale)}`` and ``{key: replacement}``; validates all."""
    path = Path(path)
    if not path.is_file():
        raise WeightLoadError(f"LoRA file not found: {path}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    replacements: dict[str, torch.Tensor] = {}
    with _open_safetensors(path, "LoRA file") as f:
        for key in f.keys():
            parsed = _lora_base_key(key)
            if parsed is None:
                base = key[len(LORA_PREFIX):] if key.startswith(LORA_PREFIX) else key
                if base not in model_shapes:
                    raise WeightLoadError(f"LoRA file {path}: tensor {key!r} matches no model parameter")
                tensor = f.get_tensor(key)
                if tensor.shape != model_shapes[base]:
                    raise WeightLoadError(f"LoRA file {path}: tensor {key!r} has shape {list(tensor.shape)}, "
                                          f"model expects {list(model_shapes[base])}")
                replacements[base] = tensor
                continue
            base, which = parsed
            if base not in model_shapes:
                raise WeightLoadError(f"LoRA file {path}: {key!r} targets {base!r}, which is not a model parameter")
            pairs.setdefault(base, {})[which] = f.get_tensor(key)
    merged = {}
    scale = float(alpha) / float(rank)
    for base, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            missing = "lora_B" if "A" in ab else "lora_A"
            raise WeightLoadError(f"LoRA file {path}: {base!r} has no {missing} tensor")
        a, b = ab["A"], ab["B"]
        out_f, in_f = model_shapes[base]
        if a.shape != (rank, in_f) or b.shape != (out_f, rank):
            raise WeightLoadError(
                f"LoRA file {path}: {base!r} has lora_A {list(a.shape)} / lora_B {list(b.shape)}, "
                f"expected [{rank}, {in_f}] / [{out_f}, {rank}] (rank {rank})"
            )
        merged[base] = (a, b, scale)
    return merged, replacements


# ---- checkpoint ---------------------------------------------------------------------------------

def read_weight_map(checkpoint_dir: str | Path) -> dict[str, Path]:
    """key -> shard path, from the index (or the single-file checkpoint); shards must exist."""
    folder = Path(checkpoint_dir)
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            result = {str(key): folder / shard for key, shard in weight_map.items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise WeightLoadError(f"{index} is not a safetensors index with a 'weight_map': {exc!r}") from None
    elif (folder / SINGLE_NAME).is_file():
        with _open_safetensors(folder / SINGLE_NAME) as f:
            result = {key: folder / SINGLE_NAME for key in f.keys()}
    else:
        raise WeightLoadError(f"{folder} has neither {INDEX_NAME} nor {SINGLE_NAME}")
    for shard in sorted(set(result.values())):
        if not shard.is_file():
            first = next(k for k, s in result.items() if s == shard)
            raise WeightLoadError(f"missing shard {shard} (listed in the index for {first!r} and others)")
    return result


def load_dit(
    checkpoint_dir: str | Path,
    *,
    config: DiTConfig | None = None,
    streaming: StreamingConfig | None = None,
    lora_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    fp8: bool = False,
    fp8_scaling: str = "tensor",
) -> CausalS2VDiT:
    """Load the DiT from ``checkpoint_dir`` (and merge ``lora_path``) onto ``device``.

    dtype defaults to bf16 on GPU and float32 on CPU; FP32_MODULES stay float32. LoRA rank/alpha come
    from ``streaming`` (spec: 128 / 64 -> scale 0.5). ``fp8`` quantises the Linears of spec 9 after the
    merge (:func:`quantize_fp8_`, with ``fp8_scaling``).
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise WeightLoadError(f"checkpoint folder not found: {folder}")
    config = config or DiTConfig.from_checkpoint_dir(folder)
    streaming = streaming or StreamingConfig()
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    model = build_meta_model(config, streaming)
    shapes = {k: p.shape for k, p in model.named_parameters()}

    weight_map = read_weight_map(folder)
    unexpected = sorted(set(weight_map) - set(shapes))
    if unexpected:
        raise WeightLoadError(f"unexpected key {unexpected[0]!r} in {weight_map[unexpected[0]].name}"
                              + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    missing = sorted(set(shapes) - set(weight_map))
    if missing:
        raise WeightLoadError(f"missing key {missing[0]!r}: not in {folder}"
                              + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))

    lora, replacements = ({}, {})
    if lora_path is not None:
        lora, replacements = read_lora(lora_path, shapes, streaming.lora_rank, streaming.lora_alpha)

    by_shard: dict[Path, list[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(key)
    for shard, keys in sorted(by_shard.items()):
        with _open_safetensors(shard) as f:
            present = set(f.keys())
            for key in sorted(keys):
                if key not in present:
                    raise WeightLoadError(f"key {key!r} is listed in the index for {shard.name} but absent from it")
                tensor = replacements[key] if key in replacements else f.get_tensor(key)
                if tensor.shape != shapes[key]:
                    raise WeightLoadError(f"key {key!r} in {shard.name} has shape {list(tensor.shape)}, "
                                          f"model expects {list(shapes[key])}")
                target = dtype_for_key(key, dtype)
                if key in lora:
                    a, b, scale = lora[key]
                    # Merge in float32 on the target device, round once (<= 1 ulp from PEFT's bf16 merge).
                    w = tensor.to(device=device, dtype=torch.float32)
                    w.addmm_(b.to(device=device, dtype=torch.float32), a.to(device=device, dtype=torch.float32),
                             alpha=scale)
                    tensor = w.to(target)
                else:
                    tensor = tensor.to(device=device, dtype=target)
                _set_tensor(model, key, tensor)
    still_meta = [k for k, p in model.named_parameters() if p.is_meta]
    if still_meta:  # defensive: the key checks above should make this impossible
        raise WeightLoadError(f"parameter {still_meta[0]!r} was not loaded")
    log.info("loaded %d tensors from %d shard(s) of %s; LoRA: %d merged Linears, %d replaced tensors%s",
             len(weight_map), len(by_shard), folder, len(lora), len(replacements), "; FP8" if fp8 else "")
    if fp8:
        quantize_fp8_(model, fp8_scaling)
    return model.eval()


# ---- random weights (benchmarks, tests) ---------------------------------------------------------

def _init_scale(key: str, shape: torch.Size) -> tuple[float, float]:
    """(std, mean) following the golden recipe's rules, so random models have sane activations."""
    if key.endswith((".norm_q.weight", ".norm_k.weight")):
        return 0.02, 2.0
    if key.endswith(".norm3.weight") or key == "casual_audio_encoder.weights":
        return 0.02, 1.0
    if key.endswith("modulation"):
        return 0.2, 0.0
    if len(shape) >= 2:
        return math.prod(shape[1:]) ** -0.5, 0.0
    return 0.02, 0.0


@torch.no_grad()
def random_init_(model: CausalS2VDiT, seed: int = 0, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> CausalS2VDiT:
    """Initialise every parameter in place with recipe-like random values (sane activations).

    Meta parameters are first given storage on ``device`` (default: where the model already lives,
    else CPU) in ``dtype`` (default bf16 on GPU, float32 on CPU; FP32_MODULES stay float32). The
    values are drawn on that device, so a 14B model initialises in seconds on a GPU.
    """
    if device is None:
        devices = {p.device for p in model.parameters() if not p.is_meta}
        device = next(iter(devices)) if devices else torch.device("cpu")
    device = torch.device(device)
    materialize_empty_(model, device, dtype or default_dtype(device))
    for key, param in model.named_parameters():
        key_seed = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)
        gen = torch.Generator(device=param.device).manual_seed(key_seed)
        std, mean = _init_scale(key, param.shape)
        param.normal_(mean, std, generator=gen)
    return model.eval()


def build_random_model(config: DiTConfig, streaming: StreamingConfig | None = None, *, seed: int = 0,
                       device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> CausalS2VDiT:
    """A model with random weights, built directly on ``device`` (no CPU copy)."""
    return random_init_(build_meta_model(config, streaming), seed, device=device, dtype=dtype)
