"""umT5 text encoder for the liveavatar DiT: prompt -> context [Lt, 4096] (Lt <= 512, padding trimmed).

transformers ``UMT5EncoderModel`` plus its tokenizer, loaded from a local folder only. Two layouts:

* transformers layout (what ``tiny_weights.write_tiny_umt5`` writes, and the diffusers Wan repos'
  layout): ``<folder>/text_encoder/`` (config.json + safetensors) and ``<folder>/tokenizer/``;
* Wan checkpoint layout: ``<folder>/models_t5_umt5-xxl-enc-bf16.pth`` (the Wan T5 encoder's own key
  names) and the tokenizer folder ``<folder>/google/umt5-xxl/``. The .pth keys are renamed to the
  transformers ones (``WAN_T5_KEY_RULES``) and loaded into a umT5-XXL config. **[VERIFY]** this
  renaming has been checked against the module structure only, not against the real file.

A prompt is encoded once per session; results are kept in a small LRU cache (prompts repeat across
sessions). Tokens: cleaned text (``TextEncoder.clean``: ftfy, HTML unescape, whitespace), truncated to ``text_len`` (512), the EOS appended by
the tokenizer; the output rows of real tokens only (the DiT zero-pads to 512 itself, spec §2.5).
If no tokenizer folder can be found the engine cannot build one offline: it raises a clear error.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_TOKENIZER_DIR = "google/umt5-xxl"

# Wan T5 encoder key -> transformers UMT5EncoderModel key (regex, replacement)
WAN_T5_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^blocks\.(\d+)\.norm1\.weight$", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.weight$", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (
        r"^blocks\.(\d+)\.pos_embedding\.embedding\.weight$",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"^blocks\.(\d+)\.norm2\.weight$", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc1\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"^blocks\.(\d+)\.ffn\.fc2\.weight$", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
    (r"^norm\.weight$", "encoder.final_layer_norm.weight"),
)

UMT5_XXL_CONFIG = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
)


@dataclass(frozen=True)
class TextEncoderConfig:
    text_len: int = 512
    cache_size: int = 8  # prompts kept (LRU)


def rename_wan_t5_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, repl in WAN_T5_KEY_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise KeyError(f"unexpected key {key!r} in the Wan T5 checkpoint")
    out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


class PromptEncoder:
    """Tokenizer + UMT5EncoderModel with an LRU cache of encoded prompts (thread-safe)."""

    def __init__(self, model: torch.nn.Module, tokenizer, config: TextEncoderConfig | None = None) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = config or TextEncoderConfig()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.dim = int(model.config.d_model)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.encode_calls = 0  # model runs (cache misses)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        config: TextEncoderConfig | None = None,
        wan_t5_config: dict | None = None,
    ) -> "PromptEncoder":
        """``wan_t5_config``: the UMT5Config fields of a Wan-layout .pth (default: umT5-XXL)."""
        from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

        folder = Path(folder)
        tok_dir = next((d for d in (folder / "tokenizer", folder / WAN_TOKENIZER_DIR) if d.is_dir()), None)
        if tok_dir is None:
            raise FileNotFoundError(
                f"no umT5 tokenizer in {folder} (expected tokenizer/ or {WAN_TOKENIZER_DIR}/); "
                "a tokenizer cannot be downloaded on this machine"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        if (folder / "text_encoder" / "config.json").is_file():
            model = UMT5EncoderModel.from_pretrained(str(folder / "text_encoder"), dtype=dtype, local_files_only=True)
        elif (folder / WAN_T5_FILE).is_file():
            state = torch.load(folder / WAN_T5_FILE, map_location="cpu", weights_only=True, mmap=True)
            with torch.device("meta"):
                model = UMT5EncoderModel(UMT5Config(**(wan_t5_config or UMT5_XXL_CONFIG)))
            missing, unexpected = model.load_state_dict(rename_wan_t5_keys(state), strict=False, assign=True)
            if missing or unexpected:
                raise KeyError(f"Wan T5 checkpoint does not fit umT5-XXL: missing {missing[:5]}, unexpected {unexpected[:5]}")
            model = model.to(dtype)
        else:
            raise FileNotFoundError(f"no umT5 encoder in {folder} (expected text_encoder/ or {WAN_T5_FILE})")
        return cls(model.to(device), tokenizer, config)

    @staticmethod
    def clean(prompt: str) -> str:
        """The reference tokenizer's cleaning: mojibake and odd Unicode fixed (ftfy), HTML entities
        unescaped (twice: prompts pasted from web pages are often escaped twice), whitespace collapsed.
        The same prompt then gives the same tokens as the reference, and the same cache entry."""
        import html

        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(prompt)))
        return " ".join(text.split())

    @torch.inference_mode()
    def _run(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(
            prompt, max_length=self.config.text_len, truncation=True, add_special_tokens=True, return_tensors="pt"
        ).input_ids.to(self.device)
        self.encode_calls += 1
        return self.model(input_ids=ids).last_hidden_state[0]

    def encode(self, prompt: str | None) -> torch.Tensor:
        """Prompt -> [Lt, d_model] (model dtype, on the model device). Cached; the result must not be modified."""
        text = self.clean(prompt or "")
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        ctx = self._run(text)
        with self._lock:
            self._cache[text] = ctx
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return ctx
