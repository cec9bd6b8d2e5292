"""Fixtures of the liveavatar DiT tests: the golden folder, recipe weights, checkpoint writers."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from live_avatar.resources import config_path

REPO_ROOT = Path(__file__).resolve().parents[3]  # the checkout; ../shared sits beside it
CONFIGS = config_path("engines")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # The CPU is shared by many processes: one thread avoids OpenMP contention (10x faster here).
    torch.set_num_threads(1)


def golden_dir() -> Path:
    return Path(os.environ.get("AVATAR_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden")).resolve()


@pytest.fixture(scope="session")
def golden() -> Path:
    folder = golden_dir()
    if not (folder / "golden_meta.json").is_file():
        pytest.skip(f"no golden folder at {folder} (set AVATAR_GOLDEN_DIR)")
    return folder


def load_recipe(folder: Path):
    """Import the folder's standalone weights_recipe.py."""
    spec = importlib.util.spec_from_file_location("golden_weights_recipe", folder / "weights_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys: key bytes, then the float32 tensor's little-endian bytes (manifest definition)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode("utf-8"))
        h.update(state[key].to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    return h.hexdigest()


def write_sharded_checkpoint(folder: Path, state: dict[str, torch.Tensor], config: dict, num_shards: int = 3,
                             dtype: torch.dtype | None = None) -> Path:
    """Write ``state`` the way the official checkpoint is laid out: config.json, n shards, index."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel_S2V", **config}))
    keys = sorted(state)
    weight_map, total = {}, 0
    for i in range(num_shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: state[k].to(dtype or state[k].dtype).contiguous() for k in keys[i::num_shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return folder


def lora_targets(keys) -> list[str]:
    """Every LoRA target Linear weight of the spec: q/k/v/o and ffn.0/ffn.2 (blocks and injectors)."""
    ends = (".q.weight", ".k.weight", ".v.weight", ".o.weight", ".ffn.0.weight", ".ffn.2.weight")
    return sorted(k for k in keys if k.endswith(ends) and (k.startswith("blocks.") or k.startswith("audio_injector.injector.")))


def split_into_base_and_lora(state: dict[str, torch.Tensor], rank: int, scale: float, seed: int = 7):
    """Split weights into base + PEFT LoRA so that ``base + scale * B @ A`` equals ``state`` (fp32 rounding).

    The LoRA delta is as large as the weight itself, so a missing or wrong merge changes everything.
    Half of the names carry PEFT's ``base_model.model.`` prefix and ``.default`` infix, half do not.
    """
    gen = torch.Generator().manual_seed(seed)
    base, lora = dict(state), {}
    for i, key in enumerate(lora_targets(state)):
        w = state[key]
        a = torch.randn(rank, w.shape[1], generator=gen) * w.shape[1] ** -0.5
        b = torch.randn(w.shape[0], rank, generator=gen) * float(w.std()) * rank ** -0.5 / scale
        base[key] = w - scale * (b @ a)
        module = key[: -len(".weight")]
        prefix, infix = ("base_model.model.", ".default") if i % 2 else ("", "")
        lora[f"{prefix}{module}.lora_A{infix}.weight"] = a
        lora[f"{prefix}{module}.lora_B{infix}.weight"] = b
    return base, lora


def step_chained(ranks, x: torch.Tensor, block_audio: torch.Tensor) -> torch.Tensor:
    """One block through one-step steppers chained as the pipeline ranks run them (sink refresh when due,
    each rank's step, then every rank advances); returns the clean latents."""
    from live_avatar.core.engines.liveavatar.sampler import euler_update

    sig = ranks[0].schedule.sigmas
    for rank in ranks:
        rank.refresh_sink_if_due()
    for step, rank in enumerate(ranks):
        x = euler_update(x, rank.denoise_step(step, x, rank.encode_audio(block_audio)), sig[step], sig[step + 1])
    for rank in ranks:
        rank.advance(x)
    return x


def assert_chained_equal_full(full, ranks, audio: torch.Tensor, noise, blocks: int) -> torch.Tensor:
    """``blocks`` blocks through ``full`` (every step) and through the chained one-step ``ranks``: the
    clean latents must be equal, block by block. Returns the last block's latents."""
    v = full.streaming.video_frames_per_block
    for b in range(blocks):
        block_audio = audio[..., b * v:(b + 1) * v]
        expected = full.step_block(block_audio, noise.block(b))
        x = step_chained(ranks, noise.block(b), block_audio)
        assert torch.equal(x, expected), f"block {b}: chained ranks differ from the full stepper by {(x.float() - expected.float()).abs().max()}"
    return x
