"""``avatar preflight``: does an engine configuration fit a GPU, how many sessions, what fps (no torch, no GPU)."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """Say, before anything loads, whether a liveavatar configuration fits a GPU (weights + per-session
state), how many sessions fit (by memory and by compute: sessions share the GPU) and the fps to expect.

The answer comes from figures measured on one H200 (live_avatar/configs/preflight/liveavatar.yaml, with
the date and command of each), interpolated over frame sizes by latent tokens and scaled to other known
GPUs (--gpu) by bf16 TFLOP/s and memory bandwidth, or timed by a GPU's own measured points where the table
has them (the H100 SXM): an estimate. Real time needs 25 fps (a 12-frame block within 480 ms, live overhead
included). Speech-to-lips at best follows from the block, the lookahead (--lookahead) and the playout margin.

A suggested size keeps 10 % of a block's budget free (--margin): a size at the budget's edge is live on
one card and not on the next of the same name. A size asked for that holds 25 fps with less is answered
yes, with the largest size that keeps the margin beside it.

Exit status: 0 fits and holds real time; 1 does not (the answer names the nearest size that works);
2 a bad request (unknown GPU, bad size)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["liveavatar"], default="liveavatar",
                   help="engine (liveavatar; the lite engine runs on a CPU and needs no preflight)")
    p.add_argument("--size", required=True, metavar="W*H", help='area cap, as the engine option size, e.g. "704*384"')
    p.add_argument("--aspect", default="9:16", help="frame aspect W:H (default 9:16 portrait)")
    p.add_argument("--fp8", action="store_true", help="DiT Linears in FP8 (engine option fp8)")
    p.add_argument("--eager", action="store_true",
                   help="no torch.compile (the engine's default; the measured figures are compiled: compile, compile_vae)")
    p.add_argument("--vae-eager", action="store_true",
                   help="compiled DiT, but the VAE decoder not compiled (compile=true with compile_vae=false): the eager "
                        "decoder's measured cost is added")
    p.add_argument("--gpu", default=None, metavar="NAME", help="a known GPU (H200, H100 SXM, A100 80GB, L40S, RTX 4090, ...)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="memory per GPU (default: the GPU's)")
    p.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs for the step pipeline (--num_gpus_dit N): the 4 steps of a block over N GPUs")
    p.add_argument("--live-factor", type=float, default=None, metavar="X",
                   help="live session cost / direct block time (default from the table: 1.01)")
    p.add_argument("--random-weights", action="store_true", help="14B random weights (benchmarks): no umT5 text encoder")
    p.add_argument("--text-encoder-cpu", action="store_true",
                   help="umT5-XXL kept in CPU memory (engine option text_encoder_device=cpu): its 11.4 GB off the GPU")
    p.add_argument("--kv-layout", choices=["contiguous", "compact"], default="contiguous",
                   help="the KV rings' layout (engine option kv_layout): compact keeps one sink copy, ~15 %% less state")
    p.add_argument("--lookahead", type=float, default=None, metavar="S",
                   help="audio past each block the live window waits for (engine option lookahead_s; default the "
                        "engine's 0.08): 0 takes 55 ms off speech-to-lips (measured), the block's last frames then "
                        "encoded without right context")
    p.add_argument("--margin", type=float, default=None, metavar="SHARE",
                   help="the share of a block's budget a suggested size keeps free (default 0.1, under which the server "
                        "warns); a size asked for is judged at 25 fps, its margin shown")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from live_avatar.core.config_loading import ConfigError
    from live_avatar.core.engines.liveavatar.preflight import (
        PreflightError,
        PreflightRequest,
        estimate,
        format_report,
    )

    request = PreflightRequest(
        size=args.size, aspect=args.aspect, fp8=args.fp8, compiled=not args.eager, compiled_vae=not args.vae_eager, gpu=args.gpu,
        gpu_memory_gb=args.gpu_memory, gpus=args.gpus, live_factor=args.live_factor,
        text_encoder=not (args.random_weights or args.text_encoder_cpu), kv_layout=args.kv_layout,
        lookahead_s=args.lookahead,
        **({} if args.margin is None else {"suggest_margin": args.margin}),
    )
    try:
        result = estimate(request)
    except (PreflightError, ConfigError) as exc:
        print(f"avatar preflight: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json()) if args.json else format_report(result))
    return 0 if result.ok else 1
