"""Loader: the official key layout (14B manifest), sharded loading, LoRA parsing, and one clear error
per kind of broken checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from live_avatar.core.engines.liveavatar.config import ConfigError, DiTConfig, StreamingConfig, load_model_config
from live_avatar.core.engines.liveavatar.fp8 import Fp8Linear, fp8_scale, fp8_targets
from live_avatar.core.engines.liveavatar.loader import (
    INDEX_NAME,
    WeightLoadError,
    build_meta_model,
    build_random_model,
    load_dit,
)

from .conftest import CONFIGS, lora_targets, write_sharded_checkpoint

TINY = load_model_config(CONFIGS / "liveavatar-tiny.yaml")
LORA = StreamingConfig(lora_rank=4, lora_alpha=2.0)


def test_meta_14b_state_dict_equals_official_manifest(golden):
    manifest = json.loads((golden / "manifest_14b.json").read_text())
    cfg = DiTConfig.from_dict(manifest["config"])
    assert cfg == load_model_config(CONFIGS / "liveavatar-14b.yaml").dit
    model = build_meta_model(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {e["key"]: e["shape"] for e in manifest["tensors"]}
    assert len(shapes) == manifest["num_tensors"] == len(expected)
    assert shapes == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    assert all(p.is_meta for p in model.parameters())
    assert len(lora_targets(shapes)) == 448  # spec 8: 448 adapted Linears


@pytest.fixture(scope="module")
def tiny_state():
    model = build_random_model(TINY.dit, seed=3)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture()
def ckpt(tmp_path, tiny_state):
    return write_sharded_checkpoint(tmp_path / "ckpt", tiny_state, TINY.dit.to_dict())


def _index(folder):
    return json.loads((folder / INDEX_NAME).read_text())


def _rewrite_shard(folder, shard, edit):
    tensors = load_file(str(folder / shard))
    edit(tensors)
    save_file(tensors, str(folder / shard))


def test_loads_sharded_checkpoint_and_reads_config(ckpt, tiny_state):
    model = load_dit(ckpt)  # architecture from config.json
    assert model.config == TINY.dit
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_state[key]), key


def test_engine_yaml_without_dit_section_reads_checkpoint_config(ckpt, tmp_path):
    yaml_path = tmp_path / "engine.yaml"
    yaml_path.write_text(f"weights:\n  checkpoint_dir: {ckpt}\nstreaming:\n  num_steps: 2\n")
    config = load_model_config(yaml_path)
    assert config.dit == TINY.dit and config.checkpoint_dir == str(ckpt)
    assert config.streaming.num_steps == 2


def test_bf16_keeps_fp32_regions(ckpt):
    model = load_dit(ckpt, dtype=torch.bfloat16)
    assert model.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.time_projection[1].weight.dtype == torch.float32
    assert model.casual_audio_encoder.encoder.conv3.conv.weight.dtype == torch.float32
    assert model.head.head.weight.dtype == torch.float32


def test_single_file_checkpoint(tmp_path, tiny_state):
    folder = tmp_path / "single"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY.dit.to_dict()))
    save_file(tiny_state, str(folder / "diffusion_pytorch_model.safetensors"))
    model = load_dit(folder)
    assert torch.equal(model.head.head.weight, tiny_state["head.head.weight"])


def test_missing_folder(tmp_path):
    with pytest.raises(WeightLoadError, match="checkpoint folder not found"):
        load_dit(tmp_path / "nope")


def test_missing_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load_dit(tmp_path / "empty")


def test_no_index_no_single_file(ckpt):
    (ckpt / INDEX_NAME).unlink()
    with pytest.raises(WeightLoadError, match="neither .*index.json nor"):
        load_dit(ckpt)


@pytest.mark.parametrize("text", ["{not json", '{"metadata": {}}', '{"weight_map": [1, 2]}'])
def test_broken_index(ckpt, text):
    (ckpt / INDEX_NAME).write_text(text)
    with pytest.raises(WeightLoadError, match="is not a safetensors index with a 'weight_map'"):
        load_dit(ckpt)


def test_corrupt_lora_file(ckpt, tmp_path):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightLoadError, match="cannot read LoRA file"):
        load_dit(ckpt, streaming=LORA, lora_path=path)


def test_missing_shard(ckpt):
    shard = sorted(set(_index(ckpt)["weight_map"].values()))[1]
    (ckpt / shard).unlink()
    with pytest.raises(WeightLoadError, match=f"missing shard .*{shard}"):
        load_dit(ckpt)


def test_missing_key(ckpt):
    index = _index(ckpt)
    del index["weight_map"]["blocks.1.ffn.2.bias"]
    (ckpt / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(WeightLoadError, match=r"missing key 'blocks\.1\.ffn\.2\.bias'"):
        load_dit(ckpt)


def test_unexpected_key(ckpt):
    index = _index(ckpt)
    shard = index["weight_map"]["head.head.weight"]
    _rewrite_shard(ckpt, shard, lambda t: t.__setitem__("motioner.extra.weight", torch.zeros(2)))
    index["weight_map"]["motioner.extra.weight"] = shard
    (ckpt / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(WeightLoadError, match=rf"unexpected key 'motioner\.extra\.weight' in {shard}"):
        load_dit(ckpt)


def test_key_listed_but_absent_from_shard(ckpt):
    shard = _index(ckpt)["weight_map"]["trainable_cond_mask.weight"]
    _rewrite_shard(ckpt, shard, lambda t: t.pop("trainable_cond_mask.weight"))
    with pytest.raises(WeightLoadError, match=rf"'trainable_cond_mask\.weight' is listed .* {shard} but absent"):
        load_dit(ckpt)


def test_wrong_shape(ckpt):
    shard = _index(ckpt)["weight_map"]["blocks.0.self_attn.q.weight"]
    _rewrite_shard(ckpt, shard, lambda t: t.__setitem__("blocks.0.self_attn.q.weight", torch.zeros(3, 3)))
    with pytest.raises(WeightLoadError, match=rf"'blocks\.0\.self_attn\.q\.weight' in {shard} has shape \[3, 3\]"):
        load_dit(ckpt)


def test_corrupt_shard(ckpt):
    shard = _index(ckpt)["weight_map"]["head.head.weight"]
    (ckpt / shard).write_bytes(b"not a safetensors file")
    with pytest.raises(WeightLoadError, match=f"cannot read shard .*{shard}"):
        load_dit(ckpt)


# ---- LoRA -----------------------------------------------------------------------------------------

def _lora_pair(state, key, rank=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = state[key].shape
    return torch.randn(rank, in_f, generator=gen), torch.randn(out_f, rank, generator=gen)


def test_lora_merge_scale_and_names(ckpt, tmp_path, tiny_state):
    a1, b1 = _lora_pair(tiny_state, "blocks.0.self_attn.q.weight")
    a2, b2 = _lora_pair(tiny_state, "audio_injector.injector.1.o.weight", seed=1)
    lora = {
        "base_model.model.blocks.0.self_attn.q.lora_A.default.weight": a1,
        "base_model.model.blocks.0.self_attn.q.lora_B.default.weight": b1,
        "audio_injector.injector.1.o.lora_A.weight": a2,
        "audio_injector.injector.1.o.lora_B.weight": b2,
    }
    path = tmp_path / "lora.safetensors"
    save_file(lora, str(path))
    model = load_dit(ckpt, streaming=LORA, lora_path=path)
    scale = LORA.lora_scale
    assert scale == 0.5
    torch.testing.assert_close(model.blocks[0].self_attn.q.weight, tiny_state["blocks.0.self_attn.q.weight"] + scale * b1 @ a1)
    torch.testing.assert_close(model.audio_injector.injector[1].o.weight,
                               tiny_state["audio_injector.injector.1.o.weight"] + scale * b2 @ a2)
    assert torch.equal(model.blocks[0].self_attn.q.bias, tiny_state["blocks.0.self_attn.q.bias"])
    assert torch.equal(model.blocks[1].self_attn.q.weight, tiny_state["blocks.1.self_attn.q.weight"])


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"blocks.0.nonexistent.lora_A.weight": torch.zeros(4, 8), "blocks.0.nonexistent.lora_B.weight": torch.zeros(8, 4)},
         r"targets 'blocks\.0\.nonexistent\.weight', which is not a model parameter"),
        ({"blocks.0.ffn.0.lora_A.weight": torch.zeros(4, 128)}, r"'blocks\.0\.ffn\.0\.weight' has no lora_B"),
        ({"blocks.0.ffn.0.lora_A.weight": torch.zeros(5, 128), "blocks.0.ffn.0.lora_B.weight": torch.zeros(256, 5)},
         r"expected \[4, 128\] / \[256, 4\] \(rank 4\)"),
        ({"motioner.proj.weight": torch.zeros(3)}, r"'motioner\.proj\.weight' matches no model parameter"),
        ({"head.modulation": torch.zeros(1, 2, 5)}, r"'head\.modulation' has shape \[1, 2, 5\]"),
    ],
    ids=["unknown-module", "missing-B", "wrong-rank", "unknown-plain-tensor", "replacement-wrong-shape"],
)
def test_lora_errors(ckpt, tmp_path, tensors, message):
    path = tmp_path / "bad_lora.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(WeightLoadError, match=message):
        load_dit(ckpt, streaming=LORA, lora_path=path)


def test_lora_file_missing(ckpt, tmp_path):
    with pytest.raises(WeightLoadError, match="LoRA file not found"):
        load_dit(ckpt, streaming=LORA, lora_path=tmp_path / "absent.safetensors")


def test_lora_replacement_tensor(ckpt, tmp_path, tiny_state):
    replacement = torch.full_like(tiny_state["head.modulation"], 0.25)
    path = tmp_path / "lora.safetensors"
    save_file({"base_model.model.head.modulation": replacement}, str(path))
    model = load_dit(ckpt, streaming=LORA, lora_path=path)
    assert torch.equal(model.head.modulation, replacement)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        DiTConfig(dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="audio_inject_layers"):
        DiTConfig(num_layers=2, audio_inject_layers=(0, 5))
    with pytest.raises(ConfigError, match="streaming config: unknown key.s. block_size"):
        StreamingConfig.from_dict({"block_size": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("dit: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_model_config(bad)


# ---- FP8 ------------------------------------------------------------------------------------------

def test_fp8_targets_of_14b_follow_spec(golden):
    manifest = json.loads((golden / "manifest_14b.json").read_text())
    names = fp8_targets(build_meta_model(DiTConfig.from_dict(manifest["config"])))
    blocks = [n for n in names if n.startswith("blocks.")]
    injectors = [n for n in names if n.startswith("audio_injector.injector.")]
    adain = [n for n in names if n.startswith("audio_injector.injector_adain_layers.")]
    assert (len(blocks), len(injectors), len(adain), len(names)) == (400, 48, 12, 460)


@pytest.mark.parametrize("scaling", ["tensor", "row"])
def test_fp8_linear_close_to_bf16(scaling):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    x = torch.randn(5, 7, 64, dtype=torch.bfloat16)
    fp8 = Fp8Linear(linear, scaling)
    assert fp8.weight.dtype == torch.float8_e4m3fn
    assert fp8.weight_scale_inv.shape == ((1, 32) if scaling == "row" else ())
    out, expected = fp8(x).float(), linear(x).float()
    assert out.shape == expected.shape
    assert ((out - expected).norm() / expected.norm()).item() < 0.05


def test_fp8_tensor_scale_is_the_spec_formula():
    """The per-row-then-all maximum gives exactly spec 9's ``min(448 / max|X|, 448)``."""
    x = torch.randn(37, 96, dtype=torch.bfloat16) * torch.logspace(-3, 2, 37, dtype=torch.bfloat16)[:, None]
    expected = torch.clamp(448.0 / x.abs().amax().float().clamp_min(1e-12), max=448.0)
    assert torch.equal(fp8_scale(x), expected)
    assert torch.equal(fp8_scale(torch.zeros(4, 16)), torch.tensor(448.0))
    rows = fp8_scale(x, rowwise=True)
    assert rows.shape == (37, 1) and torch.equal(rows.min(), expected)


def test_fp8_row_scaling_keeps_small_tokens():
    """Tokens far smaller than the largest one lose their precision under one per-matrix scale (they
    fall into e4m3's subnormals), not under per-token scales."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    x[0] *= 1e5  # one loud token
    expected = linear(x).float()[1:]
    error = {s: ((Fp8Linear(linear, s)(x).float()[1:] - expected).norm() / expected.norm()).item()
             for s in ("tensor", "row")}
    assert error["row"] < 0.05 < error["tensor"]


def test_fp8_scaling_is_checked():
    with pytest.raises(ValueError, match="FP8 scaling must be one of"):
        Fp8Linear(torch.nn.Linear(16, 16), "block")


def test_load_with_fp8(ckpt):
    model = load_dit(ckpt, dtype=torch.bfloat16, fp8=True)
    assert isinstance(model.blocks[0].ffn[0], Fp8Linear)
    assert isinstance(model.audio_injector.injector_adain_layers[0].linear, Fp8Linear)
    assert not isinstance(model.text_embedding[0], Fp8Linear)
    assert not isinstance(model.casual_audio_encoder.encoder.final_linear, Fp8Linear)
