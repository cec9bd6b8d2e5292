"""umT5 prompt encoder: local folders only, LRU cache, Wan checkpoint key renaming."""

from __future__ import annotations

import pytest
import torch

from live_avatar.core.engines.liveavatar.text_encoder import (
    WAN_T5_FILE,
    PromptEncoder,
    TextEncoderConfig,
    rename_wan_t5_keys,
)
from live_avatar.core.engines.liveavatar.tiny_weights import write_tiny_umt5

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_umt5(tmp_path_factory.mktemp("umt5"), d_model=64, seed=2)


@pytest.fixture()
def encoder(folder):
    return PromptEncoder.from_folder(folder, config=TextEncoderConfig(text_len=16, cache_size=2))


def test_encodes_real_tokens_only_and_truncates(encoder):
    short = encoder.encode("a man talks")
    n_tokens = len(encoder.tokenizer("a man talks").input_ids)  # includes </s>
    assert short.shape == (n_tokens, 64)
    assert encoder.tokenizer("a man talks").input_ids[-1] == encoder.tokenizer.eos_token_id
    long = encoder.encode("a person talking to the camera " * 20)
    assert long.shape == (16, 64)  # text_len caps the token count
    assert not torch.allclose(encoder.encode("a woman smiles")[:2], short[:2])


def test_prompts_are_cached_lru(encoder):
    a = encoder.encode("a man talks")
    assert encoder.encode_calls == 1
    assert encoder.encode("  a   man talks ") is a  # whitespace-normalised, cached
    assert encoder.encode_calls == 1
    encoder.encode("b")
    encoder.encode("c")  # evicts "a man talks" (cache_size 2)
    encoder.encode("a man talks")
    assert encoder.encode_calls == 4
    torch.testing.assert_close(encoder.encode(None), encoder.encode(""))


def test_wan_checkpoint_layout_loads_the_same_weights(folder, tmp_path):
    """A Wan-style .pth (Wan key names) renamed back gives the transformers model's exact state dict."""
    from transformers import UMT5EncoderModel

    model = UMT5EncoderModel.from_pretrained(str(folder / "text_encoder"))
    state = model.state_dict()
    inverse = {
        "shared.weight": "token_embedding.weight",
        "encoder.final_layer_norm.weight": "norm.weight",
    }
    wan = {}
    for key, value in state.items():
        if key == "encoder.embed_tokens.weight":
            continue
        if key in inverse:
            wan[inverse[key]] = value
            continue
        parts = key.split(".")  # encoder.block.i.layer.j.<module>...
        i = parts[2]
        tail = ".".join(parts[5:])
        mapping = {
            "layer_norm.weight": f"blocks.{i}.norm{int(parts[4]) + 1}.weight",
            "SelfAttention.relative_attention_bias.weight": f"blocks.{i}.pos_embedding.embedding.weight",
            "DenseReluDense.wi_0.weight": f"blocks.{i}.ffn.gate.0.weight",
            "DenseReluDense.wi_1.weight": f"blocks.{i}.ffn.fc1.weight",
            "DenseReluDense.wo.weight": f"blocks.{i}.ffn.fc2.weight",
        }
        if tail.startswith("SelfAttention.") and tail.split(".")[1] in "qkvo" and len(tail.split(".")[1]) == 1:
            wan[f"blocks.{i}.attn.{tail.split('.')[1]}.weight"] = value
        else:
            wan[mapping[tail]] = value
    renamed = rename_wan_t5_keys(wan)
    assert set(renamed) == set(state)
    for key in state:
        assert torch.equal(renamed[key], state[key]), key

    # the whole Wan-layout folder: models_t5_umt5-xxl-enc-bf16.pth + google/umt5-xxl/ tokenizer
    torch.save(wan, tmp_path / WAN_T5_FILE)
    (tmp_path / "google").mkdir()
    (tmp_path / "google" / "umt5-xxl").symlink_to(folder / "tokenizer")
    cfg = {k: getattr(model.config, k) for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                                                  "relative_attention_num_buckets", "feed_forward_proj")}
    from_wan = PromptEncoder.from_folder(tmp_path, wan_t5_config=cfg)
    from_hf = PromptEncoder.from_folder(folder)
    torch.testing.assert_close(from_wan.encode("a man talks"), from_hf.encode("a man talks"))
    with pytest.raises(KeyError, match="unexpected key"):
        rename_wan_t5_keys({"blocks.0.bogus.weight": torch.zeros(1)})


def test_missing_folders_give_clear_errors(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        PromptEncoder.from_folder(tmp_path)
    (tmp_path / "tokenizer").symlink_to(folder / "tokenizer")
    with pytest.raises(FileNotFoundError, match=WAN_T5_FILE):
        PromptEncoder.from_folder(tmp_path)


def test_prompts_are_cleaned_as_the_reference_tokenizer_does(encoder):
    clean = PromptEncoder.clean
    assert clean("  A  person\n talking\t") == "A person talking"
    assert clean("Tom &amp;amp; Jerry &lt;3") == "Tom & Jerry <3"  # escaped twice on a web page
    assert clean("The cafÃ© is open") == "The café is open"  # mojibake (UTF-8 read as Latin-1)
    # the same cleaned prompt is one cache entry: no second encoder run
    encoder.encode("A person &amp; a dog")
    calls = encoder.encode_calls
    encoder.encode("A   person & a dog")
    assert encoder.encode_calls == calls
