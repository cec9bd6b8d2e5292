"""Does the Wan VAE decoder run faster with its 3D convolutions in channels-last memory layout?

A profile of a 320x512 block on an H200 (bench/results/liveavatar_h200_graphs.json, run 8) spent ~13 ms of
the decoder's ~77 ms in cuDNN's NCDHW <-> NDHWC transposes around its convolutions: cuDNN's Hopper conv
kernels want channels last, and the decoder hands them channels-first tensors. This times the streaming
decode of a block (3 latent frames, one decoder call each, causal caches kept, as the live session decodes)
with the decoder's weights and input in the default layout and in ``torch.channels_last_3d``, eager and
(``--compiled``) under ``torch.compile``, on random weights of the real VAE (or ``--tiny`` on a CPU), and
checks that both layouts give the same pixels.

    python -m bench.vae_layout --size 512*320 --blocks 8 [--compiled] [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

LAYOUTS = ("contiguous", "channels_last_3d")


def _decode_block(decoder, x, cache: list, memory_format):
    """One block's latent frames through the decoder a frame at a time (caches kept): pixels [1, 3, T, H, W]."""
    import torch

    parts = []
    for t in range(x.shape[2]):
        frame = x[:, :, t:t + 1].contiguous(memory_format=memory_format)
        parts.append(decoder(frame, feat_cache=cache, feat_idx=[0]).clamp(-1.0, 1.0))
    return torch.cat(parts, dim=2)


def run_layout(vae, layout: str, latents: list, warmup: int, compiled: bool, device) -> dict:
    """Decode ``latents`` (post-quant-conv inputs [1, 16, 3, h, w] per block) with the decoder in ``layout``."""
    import torch

    memory_format = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
    decoder = vae.decoder
    with torch.no_grad():
        for param in decoder.parameters():
            if param.ndim == 5:  # the 3D convolutions' weights (Module.to(memory_format) wants every tensor 5-D)
                param.data = param.data.contiguous(memory_format=memory_format)
    call = torch.compile(decoder, dynamic=False) if compiled else decoder
    cache: list = [None] * sum(1 for m in decoder.modules() if type(m).__name__ == "WanCausalConv3d")
    times, outputs = [], []
    with torch.inference_mode():
        for k, x in enumerate(latents):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = _decode_block(call, x, cache, memory_format)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k >= warmup:
                times.append(1000.0 * (time.perf_counter() - t0))
            outputs.append(out.float().cpu())
    return {"block_ms_median": round(statistics.median(times), 2), "block_ms_min": round(min(times), 2),
            "blocks_timed": len(times), "outputs": outputs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vae_layout", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="512*320", help='area cap "W*H" with the 9:16 rule of --size (default 512*320: 320x512)')
    p.add_argument("--blocks", type=int, default=8, help="timed blocks (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="untimed blocks first (default 3; the caches fill over two)")
    p.add_argument("--compiled", action="store_true", help="also time the decoder under torch.compile")
    p.add_argument("--tiny", action="store_true", help="the tiny random VAE (a CPU check of the same path)")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    if args.blocks < 1 or args.warmup < 0:
        p.error("--blocks must be >= 1 and --warmup >= 0")

    import torch

    from live_avatar.core.engines.liveavatar.options import frame_size

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    width, height = frame_size(args.size, "9:16")
    torch.manual_seed(0)
    if args.tiny:
        from live_avatar.core.engines.liveavatar.tiny_weights import tiny_vae

        vae = tiny_vae()
    else:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan()  # the Wan2.1 VAE's layout, random weights
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    gen = torch.Generator(device="cpu").manual_seed(1)
    with torch.inference_mode():
        latents = [vae.post_quant_conv(torch.randn(1, 16, 3, height // 8, width // 8, generator=gen).to(device, dtype))
                   for _ in range(args.warmup + args.blocks)]
    if args.compiled:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    results: dict = {}
    reference = None
    for compiled in (False, True) if args.compiled else (False,):
        for layout in LAYOUTS:
            name = f"{'compiled' if compiled else 'eager'}/{layout}"
            r = run_layout(vae, layout, latents, args.warmup, compiled, device)
            outputs = r.pop("outputs")
            if reference is None:
                reference = outputs
            r["max_abs_diff_vs_first"] = max(float((a - b).abs().max()) for a, b in zip(outputs, reference, strict=True))
            results[name] = r
            print(f"{name:28s} block {r['block_ms_median']:8.2f} ms (min {r['block_ms_min']:.2f})  "
                  f"max |diff| {r['max_abs_diff_vs_first']:.3g}", flush=True)
    data = {
        "benchmark": "vae_layout",
        "command": "python -m bench.vae_layout " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""), "frame": [width, height],
        "vae": "tiny random" if args.tiny else "Wan2.1 VAE layout, random weights",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "results": results,
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
