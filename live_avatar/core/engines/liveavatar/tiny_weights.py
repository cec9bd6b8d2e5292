"""Seeded random tiny models for every part of the liveavatar engine, so the whole path runs on a CPU.

Nothing is downloaded: the VAE is a small ``AutoencoderKLWan``; wav2vec2 and umT5 are tiny random
transformers configs written to a local folder with ``save_pretrained`` (the engine then loads them
through the same ``from_folder`` code as the real checkpoint), and the umT5 tokenizer is a small
Unigram tokenizer over a fixed vocabulary (``tokenizers`` library). The tiny DiT comes from the DiT
module's own tiny configuration (``loader``/``config``) and is loaded by the engine.

The shapes that cross module borders are kept: 16 latent channels, 25 wav2vec hidden states, the
wav2vec conv stack (320-sample hop), and the text width the DiT expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TinySpec:
    vae_base_dim: int = 8
    audio_dim: int = 32  # wav2vec hidden size == DiT audio_dim
    audio_layers: int = 24  # 24 layers + embedding = 25 hidden states, as wav2vec2-large
    text_dim: int = 64  # umT5 d_model == DiT text_dim
    text_vocab: int = 256
    seed: int = 0


def _seeded(seed: int):
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    return gen_state


def tiny_dit_config(spec: TinySpec | None = None):
    """A 2-layer DiT that keeps every structural feature (injection after every layer, 25 audio layers)."""
    from .config import DiTConfig

    spec = spec or TinySpec()
    return DiTConfig(
        dim=64,
        ffn_dim=128,
        num_heads=2,
        num_layers=2,
        text_dim=spec.text_dim,
        audio_dim=spec.audio_dim,
        num_audio_layers=spec.audio_layers + 1,
        audio_inject_layers=(0, 1),
    )


def tiny_vae(seed: int = 0, base_dim: int = 8):
    """A small Wan2.1-layout VAE (z_dim 16, ×4 time, ×8 space) with seeded random weights."""
    from diffusers import AutoencoderKLWan

    state = _seeded(seed)
    try:
        # no residual blocks in the encoder (one per decoder stage): the causal convs, the temporal
        # up/down sampling and the middle attention are kept, at a fraction of the CPU time
        vae = AutoencoderKLWan(
            base_dim=base_dim, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=0, temperal_downsample=[False, True, True]
        )
    finally:
        torch.random.set_rng_state(state)
    return vae.eval()


def write_tiny_wav2vec(folder: str | Path, *, hidden_size: int = 32, num_layers: int = 24, seed: int = 0) -> Path:
    """Save a tiny random Wav2Vec2ForCTC (xlsr layout: stable layer norm, layer-norm conv stack) to ``folder``."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = Wav2Vec2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        vocab_size=32,
    )
    state = _seeded(seed)
    try:
        model = Wav2Vec2ForCTC(cfg)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(folder))
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(str(folder))
    return folder


_TOKENIZER_CORPUS = (
    "a person talking to the camera, natural head motion, clear lip movement. "
    "a woman speaks in a bright studio; a man explains something with a smile. "
    "the quick brown fox jumps over the lazy dog. live streaming avatar, realistic face, soft light."
)


def build_tiny_tokenizer(vocab_size: int = 256):
    """A T5-style (Unigram, </s>-terminated) fast tokenizer over a fixed vocabulary from a small built-in corpus.

    The vocabulary is written out, not trained: the Unigram trainer breaks score ties in a per-process
    order (Rust hash maps, threads), so two processes got different token ids for the same prompt, hence
    different text contexts and renders up to 19 grey levels apart (issue 9, point 5).
    """
    from collections import Counter

    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    text = _TOKENIZER_CORPUS.lower()
    words = Counter("\u2581" + w for w in re.findall(r"[a-z]+", text))
    chars = sorted(set(text.replace(" ", "")) | {"\u2581"})
    # whole words (most frequent first, then alphabetical) are likelier than spelling them out by characters
    pieces = [(p, 0.0) for p in specials]
    pieces += [(w, -1.0 - 1.0 / n) for w, n in sorted(words.items(), key=lambda item: (-item[1], item[0]))]
    pieces += [(c, -10.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces[:vocab_size], unk_id=specials.index("<unk>"), byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def write_tiny_umt5(folder: str | Path, *, d_model: int = 64, vocab_size: int = 256, seed: int = 0) -> Path:
    """Save a tiny random UMT5EncoderModel (``text_encoder/``) and an offline-built tokenizer (``tokenizer/``)."""
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    tokenizer = build_tiny_tokenizer(vocab_size)
    cfg = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=16,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    state = _seeded(seed)
    try:
        model = UMT5EncoderModel(cfg)
    finally:
        torch.random.set_rng_state(state)
    model.save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder
