"""Does the Wan VAE decoder run faster with its 3D convolutions in channels-last memory layout?

A profile of a 320x512 block on an H200 (bench/results/liveavatar_h200_graphs.json, run 8) spent ~13 ms of
the decoder's ~77 ms in cuDNN's NCDHW <-> NDHWC transposes around its convolutions: cuDNN's Hopper conv
kernels want channels last, and the decoder hands them channels-first tensors. This times the streaming
decode of a block through the engine's own path (``WanVaeCodec.stream()``: 3 latent frames, one decoder
call each, causal caches kept, each part to uint8 on the host, as the live session decodes) in the default
layout and with ``WanVaeCodec.use_channels_last()`` (the engine option ``vae_channels_last``), eager and
(``--compiled``) under ``torch.compile``, on random weights of the real VAE (or ``--tiny`` on a CPU); it
reports how far the frames of each variant are from the first (uint8 levels) and whether anything compiled
while timed.

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


def run_layout(vae_factory, layout: str, motion, blocks: list, warmup: int, compiled: bool, device) -> dict:
    """Decode ``blocks`` (normalised latents [16, 3, h, w] each) through the engine's streaming path
    (WanVaeCodec's LatentVideoStream, primed with ``motion``, a block's three parts to uint8 on the host)
    with the decoder in ``layout``."""
    import torch
    from torch._dynamo.utils import counters

    from live_avatar.core.engines.liveavatar.vae_stream import (
        WanVaeCodec,
        to_uint8_frames,
    )

    codec = WanVaeCodec(vae_factory())
    if compiled:
        torch._dynamo.reset()  # each variant compiles afresh, under the engine's default limits
    codec.configure(channels_last=layout == "channels_last_3d", compile_decoder=compiled)  # as the engine does
    stream = codec.stream()
    stream.start(motion)
    times, outputs, graphs_before = [], [], None
    with torch.inference_mode():
        for k, z in enumerate(blocks):
            if k == warmup:
                graphs_before = counters["stats"]["unique_graphs"]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            frames = [to_uint8_frames(part) for part in stream.decode_block_parts(z)]
            if k >= warmup:
                times.append(1000.0 * (time.perf_counter() - t0))
            outputs.append(torch.cat(frames).float())  # uint8 frames on the host
    return {"block_ms_median": round(statistics.median(times), 2), "block_ms_min": round(min(times), 2),
            "blocks_timed": len(times), "graphs_compiled_while_timed": counters["stats"]["unique_graphs"] - graphs_before,
            "outputs": outputs}


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
    def vae_factory():
        torch.manual_seed(0)  # the same random weights for every variant
        if args.tiny:
            from live_avatar.core.engines.liveavatar.tiny_weights import tiny_vae

            vae = tiny_vae()
        else:
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan()  # the Wan2.1 VAE's layout, random weights
        return vae.to(device, dtype)

    gen = torch.Generator(device="cpu").manual_seed(1)
    h, w = height // 8, width // 8
    motion = torch.randn(16, 19, h, w, generator=gen).to(device)
    blocks = [torch.randn(16, 3, h, w, generator=gen).to(device) for _ in range(args.warmup + args.blocks)]
    results: dict = {}
    reference = None
    for compiled in (False, True) if args.compiled else (False,):
        for layout in LAYOUTS:
            name = f"{'compiled' if compiled else 'eager'}/{layout}"
            r = run_layout(vae_factory, layout, motion, blocks, args.warmup, compiled, device)
            outputs = r.pop("outputs")
            if reference is None:
                reference = outputs
            r["max_abs_diff_vs_first"] = max(float((a - b).abs().max()) for a, b in zip(outputs, reference, strict=True))
            results[name] = r
            print(f"{name:28s} block {r['block_ms_median']:8.2f} ms (min {r['block_ms_min']:.2f})  "
                  f"max |diff| {r['max_abs_diff_vs_first']:.3g} (uint8 levels)  "
                  f"graphs compiled while timed {r['graphs_compiled_while_timed']}", flush=True)
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
