"""The DiT's self-attention alone, per SDPA backend and dtype, at the live sizes' shapes (GPU).

Attention is a quarter of a graphed FP8 block's GPU time at 320x512 (cuDNN's flash kernel, bf16:
bench/results/liveavatar_h200_graphs.json). This times one self-attention call as a live block makes it
(queries: the block's 3 latent frames; keys: the sink + the full KV ring) with each backend torch offers,
in bf16 and, where a backend takes it, FP8 (e4m3) inputs, and SageAttention 1 (INT8 Q.K, where the
``sageattention`` package is installed): how much a lower-precision attention could take off a block
before the engine takes one up. Numbers only; nothing here changes the engine.

    python -m bench.attention_backends [--output bench/results/attention_backends_<gpu>.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.result_file import result_header, write_result

HEADS, HEAD_DIM, LAYERS, STEPS = 40, 128, 40, 4
# (frame, latent tokens per frame, sink tokens): the ring holds 4 blocks of 3 latent frames at most
SIZES = {"320x512": (640, 1600), "384x640": (960, 2400)}


def _time_ms(fn, repeats: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return 1000.0 * (time.perf_counter() - start) / repeats


def _timed_row(call, reference, flop: float, repeats: int) -> dict:
    """One attention implementation: its time a call and a block, and its error against bf16 SDPA."""
    err = (call().float() - reference).abs()
    ms = _time_ms(call, repeats)
    return {"ms": round(ms, 3), "tflops": round(flop / ms / 1e9, 1), "per_block_ms": round(ms * LAYERS * STEPS, 1),
            "max_abs_err_vs_bf16": round(err.max().item(), 4), "mean_abs_err": round(err.mean().item(), 5)}


def _sageattention(q, k, v, reference, flop: float, repeats: int) -> dict:
    """SageAttention 1 (pip sageattention, Triton): Q and K quantised to INT8 per block, P.V in fp16."""
    try:
        from sageattention import sageattn
    except ImportError:
        return {"error": "sageattention not installed"}
    return _timed_row(lambda: sageattn(q, k, v, tensor_layout="HND"), reference, flop, repeats)


def run(repeats: int = 20) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "sizes": {}}
    for size, (tokens, sink) in SIZES.items():
        nq, nk = 3 * tokens, sink + 12 * tokens
        flop = 4.0 * nq * nk * HEAD_DIM * HEADS
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
                   for n in (nq, nk, nk))
        reference = F.scaled_dot_product_attention(q, k, v).float()
        rows = {}
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn)):
            qq, kk, vv = (t.to(dtype) for t in (q, k, v))
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
                key = f"{dtype_name}/{backend.name.lower()}"
                try:
                    with sdpa_kernel(backend):
                        rows[key] = _timed_row(lambda q=qq, k=kk, v=vv: F.scaled_dot_product_attention(q, k, v),
                                               reference, flop, repeats)
                except Exception as exc:  # a backend that does not take these inputs: say which and why
                    rows[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        rows["int8_qk/sageattention"] = _sageattention(q, k, v, reference, flop, repeats)
        results["sizes"][size] = {"queries": nq, "keys": nk, "gflop_per_call": round(flop / 1e9, 1), "backends": rows}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    results = {**result_header("attention_backends", argv), **run(args.repeats)}
    print(json.dumps(results, indent=1))
    if args.output:
        write_result(args.output, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
