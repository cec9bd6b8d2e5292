"""``avatar bench liveavatar``: the liveavatar engine's per-block cost on one GPU (or tiny, on a CPU).

What runs is the engine's own session path (``LiveAvatarEngine.new_generator(...).generate(block)``):
per block of 12 frames, wav2vec2 features of the block's rolling window, 4 DiT calls over the KV rings
and the sink, and the streaming Wan2.1 VAE decode to uint8 frames. With ``--device cuda`` the real
14B architecture is built with random bf16 weights (``random_weights=True``: the DiT, the Wan2.1 VAE
and wav2vec2-large; a seeded random prompt context replaces umT5, which runs once per session).

Per size and mode (eager, then ``torch.compile`` of the DiT blocks and the VAE decoder):
  * time to first block: new session -> first block's frames (sink prefill + VAE priming + block 0), for
    the first session of the size (includes first-use and compile costs) and for a second one (warm);
  * ``--warmup`` blocks (clip 0, the sink refresh before clip 1, and compilation), then
    ``--blocks`` timed blocks: median per-block latency and its stages (audio, DiT, VAE), fps;
  * the sink refresh (VAE re-encode of the last 73 frames + sink call) of block 4;
  * peak GPU memory (allocated, over the whole run of that size);
  * the DiT FLOPs per block and the achieved rate;
  * a torch.profiler summary of one block (GPU kernel time by family, top kernels).
Modes: ``eager`` and ``compiled`` in bf16, ``fp8-eager`` and ``fp8-compiled`` with the DiT's FP8 Linears
(a second engine, built after the bf16 one is freed).
Every stage is timed with the device synchronised (``sync_timing``). Results are written after each
(mode, size), so a run stopped early keeps what it measured.

Sizes follow the reference's ``--size`` rule on a 9:16 portrait: "688*368" -> 384x640 and
"720*400" -> 384x704 (W x H).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
import weakref
from pathlib import Path

import numpy as np

from bench.gpu_state import GpuSampler
from bench.gpu_state import snapshot as gpu_snapshot

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = ("688*368", "720*400")
# mode -> (FP8 Linears, torch.compile)
MODES = {"eager": (False, False), "compiled": (False, True), "fp8-eager": (True, False), "fp8-compiled": (True, True)}
SPF = 640  # samples per frame at 16 kHz / 25 fps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda if available)")
    p.add_argument("--tiny", action="store_true", help="tiny random models (CPU check of the same code path)")
    p.add_argument("--sizes", nargs="+", default=None, help='area caps "W*H" (default: 688*368 720*400; tiny: 128*64)')
    p.add_argument("--aspect", default="9:16", help="frame aspect W:H (default 9:16 portrait)")
    p.add_argument("--blocks", type=int, default=8, help="timed blocks after warm-up (default 8)")
    p.add_argument("--warmup", type=int, default=6, help="untimed blocks first (default 6: clip 0, the sink refresh, recompiles)")
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=list(MODES),
                   help="eager / compiled (torch.compile of the DiT blocks), each in bf16 or with FP8 Linears "
                        "(fp8-eager, fp8-compiled); default: eager compiled")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler block")
    p.add_argument("--vae-cudnn-benchmark", action="store_true",
                   help="also time the VAE block decode alone with torch.backends.cudnn.benchmark off and on")
    p.add_argument("--output", type=Path, default=None, help="JSON file (default bench/results/liveavatar_<device>.json)")
    p.add_argument("--merge", action="store_true", help="keep the other modes/sizes already in --output")
    p.add_argument("--seed", type=int, default=420)
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option (repeatable), as avatar serve takes it, e.g. cuda_graphs=true or compile_vae=true; "
                        "compiled modes compile what the server would with these options")
    pipe = p.add_argument_group("step pipeline (bench/liveavatar_pipeline.py): first --sizes entry, first --modes entry")
    pipe.add_argument("--num_gpus_dit", type=int, default=1, help="N > 1: the 4 steps over N ranks (one process each)")
    pipe.add_argument("--vae_gpu", action="store_true", help="the VAE on a rank of its own")
    pipe.add_argument("--share-gpu", action="store_true", help="every rank on one GPU (14B shapes and memory per rank)")


def _synthetic_block(k: int, context: int, lookahead: int):
    """Speech-like audio (voiced harmonics with a syllable-rate envelope + noise), deterministic per block."""
    from live_avatar.core.contract import AudioBlock

    n = context + 12 * SPF + lookahead
    t = (np.arange(n) + (12 * k * SPF - context)) / 16000.0
    rng = np.random.default_rng(1000 + k)
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    voiced = sum(np.sin(2 * np.pi * h * np.cumsum(f0) / 16000.0) / h for h in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None)
    samples = (0.2 * voiced * envelope + 0.01 * rng.standard_normal(n)).astype(np.float32)
    return AudioBlock(samples=samples, first_frame=12 * k, num_frames=12, context=context, lookahead=lookahead,
                      speech=np.ones(12, bool))


def _portrait(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:1280, 0:720]
    base = np.stack([xx * 255 // 720, yy * 255 // 1280, (xx + yy) % 256], axis=-1)
    return np.clip(base + rng.integers(0, 30, base.shape), 0, 255).astype(np.uint8)


def dit_flops_per_block(cfg, streaming, tokens_per_frame: int, sink_tokens: int) -> float:
    """Matmul FLOPs of one block's DiT calls at steady state (full ring): 2·m·n·k per product."""
    d, n = cfg.dim, streaming.latent_frames_per_block * tokens_per_frame
    keys = streaming.ring_latent_frames * tokens_per_frame + sink_tokens
    per_layer = (
        2 * n * d * d * 4  # self-attention q, k, v, o
        + 2 * n * keys * d * 2  # QK^T and PV
        + 2 * n * d * d * 2  # cross-attention q, o (text K/V cached per session)
        + 2 * n * cfg.text_len * d * 2  # cross-attention over 512 text rows
        + 2 * n * d * cfg.ffn_dim * 2  # FFN
    )
    inject = cfg.num_injectors * (2 * n * d * d * 2 + 2 * streaming.latent_frames_per_block * 5 * d * d * 2)
    return float(streaming.num_steps * (cfg.num_layers * per_layer + inject))


def _kernel_family(name: str) -> str:
    low = name.lower()
    if any(s in low for s in ("flash", "fmha", "attention", "sdpa", "cudnn_generated", "mha")):
        return "attention"
    # cuDNN convolutions run as "fprop_implicit_gemm" kernels: test for them before the matmul names
    if any(s in low for s in ("conv", "fprop", "implicit", "winograd", "im2col")):
        return "conv"
    if any(s in low for s in ("gemm", "nvjet", "cutlass", "xmma", "matmul", "aten::mm", "aten::addmm", "splitk")):
        return "matmul"
    if any(s in low for s in ("memcpy", "memset")):
        return "memcpy"
    if any(s in low for s in ("norm", "reduce", "softmax")):
        return "norm/reduce"
    return "elementwise/other"


def _profile_block(gen, block, device_type: str) -> dict:
    """One block under torch.profiler. On CUDA only kernel time counts (CPU-side op entries carry their
    children's device time too and would double-count); "Command Buffer Full" (the host waiting for a free
    slot in the launch queue: the GPU is the bottleneck, not the launches) is reported apart."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device_type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        gen.generate(block)
        if cuda:
            torch.cuda.synchronize()
    wall_ms = 1000.0 * (time.perf_counter() - t0)
    rows, queue_full = [], 0
    for evt in prof.key_averages():
        if cuda:
            if evt.key == "Command Buffer Full":
                queue_full += int(evt.count)
                continue
            if evt.device_type != DeviceType.CUDA:
                continue
            t = evt.self_device_time_total
        else:
            t = evt.self_cpu_time_total
        if t > 0:
            rows.append((evt.key, float(t) / 1000.0, int(evt.count)))
    total = sum(r[1] for r in rows)
    families: dict[str, float] = {}
    for name, ms, _ in rows:
        families[_kernel_family(name)] = families.get(_kernel_family(name), 0.0) + ms
    rows.sort(key=lambda r: -r[1])
    ordered = sorted(families.items(), key=lambda kv: -kv[1])
    return {
        "clock": "gpu kernel time" if cuda else "cpu self time",
        "block_wall_ms": round(wall_ms, 1),
        "total_ms": round(total, 1),
        "launch_queue_full_events": queue_full if cuda else None,
        "by_family_ms": {k: round(v, 1) for k, v in ordered},
        "by_family_share": {k: round(v / total, 3) for k, v in ordered} if total else {},
        "top": [{"name": n[:120], "ms": round(ms, 2), "calls": c} for n, ms, c in rows[:40]],
    }


def _blocks_out(gen, ks, context: int, lookahead: int, sync):
    """(k, frames, time it came out) per block; a generator that pipelines gets ``pipeline_depth`` at once."""
    pipelines = callable(getattr(gen, "submit", None))
    depth = getattr(gen, "pipeline_depth", 1) if pipelines else 1
    pending = []
    for k in ks:
        if not pipelines:
            frames = gen.generate(_synthetic_block(k, context, lookahead))
            yield k, frames, sync()
            continue
        gen.submit(_synthetic_block(k, context, lookahead))
        pending.append(k)
        if len(pending) >= depth:  # collect() returns once the frames are on the host: no device-wide
            frames = gen.collect()  # sync here, which would wait for the next block's decode too
            yield pending.pop(0), frames, time.perf_counter()
    while pending:
        frames = gen.collect()
        yield pending.pop(0), frames, time.perf_counter()


def _vae_compiled(engine, mode: str) -> bool:
    """Whether a compiled mode compiles the VAE decoder too, as the server would with compile=true."""
    from live_avatar.core.engines.liveavatar.options import vae_compile_wanted

    return bool(MODES[mode][1]) and vae_compile_wanted(engine.options.compile_vae, True, engine.device.type)


def _median_ms(values) -> float:
    return round(1000.0 * statistics.median(values), 1)


def _bench_size(engine, size: str, aspect: str, mode: str, args, profile: bool) -> dict:
    import torch

    from live_avatar.core.engines.liveavatar.warmup import compiled_graphs

    cuda = engine.device.type == "cuda"

    def sync() -> float:
        if cuda:
            torch.cuda.synchronize(engine.device)
        return time.perf_counter()

    width, height = engine.set_size(size, aspect)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(engine.device)
    t0 = sync()
    avatar = engine.prepare_avatar(_portrait(args.seed))
    prepare_s = sync() - t0

    t0 = sync()
    gen = engine.new_generator(avatar, "a person talking", sync_timing=True)
    try:
        context, lookahead = gen.context_samples, gen.lookahead_samples
        gen.generate(_synthetic_block(0, context, lookahead))
        ttfb = sync() - t0
        first = gen.timings
        records = []
        total_blocks = args.warmup + args.blocks
        warm_t0 = previous = time.perf_counter()
        # a block's time is the interval between two blocks coming out: for a generator that pipelines
        # (overlap_vae) that is its throughput, for the others the block's own time
        for k, frames, finished in _blocks_out(gen, range(1, total_blocks), context, lookahead, sync):  # noqa: B007 (frame_shape)
            records.append((k, finished - previous, gen.timings))
            previous = finished
            if k == args.warmup - 1:
                warm_s = time.perf_counter() - warm_t0
        if args.warmup <= 1:
            warm_s = 0.0
        timed = [r for r in records if r[0] >= args.warmup]
        refresh = next((r[2].refresh_s for r in records if r[0] == engine.parts.model_config.streaming.blocks_per_clip), None)
        result = {
            "width": width,
            "height": height,
            "tokens_per_latent_frame": gen.stepper.tokens_per_frame,
            "sink_tokens": gen.stepper.sink_tokens,
            "timed_blocks": len(timed),
            "block_ms_median": _median_ms([r[1] for r in timed]),
            "block_ms_min": round(1000 * min(r[1] for r in timed), 1),
            "block_ms_max": round(1000 * max(r[1] for r in timed), 1),
            # every timed block, in order: whether a slow median is steady or a few blocks
            "blocks_ms": [round(1000 * r[1], 1) for r in timed],
            "dit_blocks_ms": [round(1000 * r[2].dit_s, 1) for r in timed],
            "fps": round(12.0 / statistics.median([r[1] for r in timed]), 2),
            "dit_ms_median": _median_ms([r[2].dit_s for r in timed]),
            "vae_decode_ms_median": _median_ms([r[2].vae_s for r in timed]),
            "audio_features_ms_median": _median_ms([r[2].audio_s for r in timed]),
            "time_to_first_block_s": round(ttfb, 3),
            "first_block_stages_s": {
                "prefill_text_sink_vae_prime": round(first.prefill_s, 3),
                "audio": round(first.audio_s, 3), "dit": round(first.dit_s, 3), "vae": round(first.vae_s, 3),
            },
            "warmup_blocks_s": round(warm_s, 2),
            "sink_refresh_s": None if refresh is None else round(refresh, 3),
            "prepare_avatar_s": round(prepare_s, 3),
            "frame_shape": list(frames.shape),
            "session_state_gb": round(gen.stepper.state_nbytes / 1e9, 2),
            "vae_compiled": _vae_compiled(engine, mode),
            "cuda_graph_steps": gen.stepper.graphs.recorded_steps if gen.stepper.graphs is not None else [],
            "blocks_in_flight": getattr(gen, "pipeline_depth", 1) if callable(getattr(gen, "submit", None)) else 1,
        }
        flops = dit_flops_per_block(engine.parts.dit.config, engine.parts.model_config.streaming,
                                    gen.stepper.tokens_per_frame, gen.stepper.sink_tokens)
        result["dit_tflop_per_block"] = round(flops / 1e12, 1)
        result["dit_tflops_achieved"] = round(flops / 1e12 / statistics.median([r[2].dit_s for r in timed]), 1)
        if profile:
            result["profile"] = _profile_block(gen, _synthetic_block(total_blocks, context, lookahead), engine.device.type)
    finally:
        # a weak reference: without reuse_sessions its memory must go now
        first_stepper = weakref.ref(gen.stepper) if getattr(gen, "stepper", None) is not None else lambda: None
        gen.close()
    # a second session on the warm engine: what a new viewer waits for (no first-use or compile cost);
    # it runs past the sink refresh and into the graphed calls, and must compile nothing
    compiled_before = compiled_graphs()
    t0 = sync()
    gen = engine.new_generator(avatar, "a person talking", sync_timing=True)
    try:
        # reuse_sessions: the first session's stepper, its graphs recorded (none to record, nothing to allocate)
        result["second_session_reused_stepper"] = gen.stepper is first_stepper()
        gen.generate(_synthetic_block(0, context, lookahead))
        result["time_to_first_block_warm_s"] = round(sync() - t0, 3)
        result["first_block_warm_stages_s"] = {
            "prefill_text_sink_vae_prime": round(gen.timings.prefill_s, 3), "audio": round(gen.timings.audio_s, 3),
            "dit": round(gen.timings.dit_s, 3), "vae": round(gen.timings.vae_s, 3),
        }
        second = engine.parts.model_config.streaming.blocks_per_clip + 2
        for _ in _blocks_out(gen, range(1, second), context, lookahead, sync):
            pass
        result["second_session_blocks"] = second
        result["graphs_compiled_in_second_session"] = compiled_graphs() - compiled_before
    finally:
        gen.close()
    if cuda:
        result["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(engine.device) / 2**30, 2)
        result["peak_gpu_reserved_gb"] = round(torch.cuda.max_memory_reserved(engine.device) / 2**30, 2)
    return result


def _vae_cudnn_benchmark(engine, size: str, aspect: str, blocks: int = 6) -> dict:
    """Median VAE decode of one block (3 latents -> 12 frames, uint8 on the host), cudnn autotuning off vs on."""
    import torch

    from live_avatar.core.engines.liveavatar.vae_stream import to_uint8_frames

    width, height = engine.set_size(size, aspect)
    codec = engine.parts.codec
    gen = torch.Generator(device=engine.device).manual_seed(0)
    shape = (codec.z_dim, 3, height // 8, width // 8)
    motion = torch.randn(codec.z_dim, 19, height // 8, width // 8, generator=gen, device=engine.device)
    out = {"size": f"{width}x{height}"}
    previous = torch.backends.cudnn.benchmark
    try:
        for flag in (False, True):
            torch.backends.cudnn.benchmark = flag
            stream = codec.stream()
            stream.start(motion)
            times = []
            for k in range(blocks + 2):
                z = torch.randn(shape, generator=gen, device=engine.device)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                to_uint8_frames(stream.decode_block(z))
                torch.cuda.synchronize()
                if k >= 2:
                    times.append(time.perf_counter() - t0)
            out["on" if flag else "off"] = _median_ms(times)
    finally:
        torch.backends.cudnn.benchmark = previous
    return out


def _environment(engine) -> dict:
    import torch

    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(engine.device),
        "dtype": str(engine.dtype).replace("torch.", ""),
        "weights": engine.parts.description,
    }
    if engine.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(engine.device)
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(engine.device).total_memory / 2**30, 1)
        env["gpu_state"] = gpu_snapshot(engine.device.index or 0)  # limits, clocks, other processes
    try:
        import diffusers
        import transformers

        env["diffusers"], env["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError:
        pass
    return env


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    import torch

    from live_avatar.cli.serve import parse_engine_options
    from live_avatar.core.config_loading import ConfigError
    from live_avatar.core.engines import load_engine

    if args.blocks < 1 or args.warmup < 1:
        print("--blocks and --warmup must be >= 1", file=sys.stderr)
        return 2
    if args.num_gpus_dit > 1 or args.vae_gpu:
        from bench.liveavatar_pipeline import run_pipeline

        return run_pipeline(args)
    sizes = args.sizes or (["128*64"] if args.tiny else list(DEFAULT_SIZES))
    if args.device == "auto" and not torch.cuda.is_available() and not args.tiny:
        print("no GPU: the 14B benchmark needs CUDA (use --tiny --device cpu to check the code path)", file=sys.stderr)
        return 2
    try:
        extra_options = parse_engine_options(args.engine_option)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    # the CUDA graphs' recordings say what memory they took
    graphs_log = logging.getLogger("live_avatar.core.engines.liveavatar.step_graphs")
    graphs_log.setLevel(logging.INFO)
    graphs_log.addHandler(logging.StreamHandler(sys.stdout))
    modes = [m for m in MODES if m in args.modes]  # bf16 first, then FP8 (a fresh engine)
    output, data = args.output, {}
    for fp8 in sorted({MODES[m][0] for m in modes}):
        options = {"device": args.device, "seed": args.seed, "aspect": args.aspect, **extra_options, "fp8": fp8}
        options["tiny" if args.tiny else "random_weights"] = True
        t0 = time.perf_counter()
        try:
            engine = load_engine("liveavatar", **options)
        except ConfigError as exc:  # a bad --engine-option: say which, no traceback
            print(f"liveavatar bench: {exc}", file=sys.stderr)
            return 2
        build_s = time.perf_counter() - t0
        if output is None:
            tag = "cpu_tiny" if engine.device.type == "cpu" else torch.cuda.get_device_name(engine.device).split()[-1].lower()
            output = RESULTS_DIR / f"liveavatar_{tag}.json"
        if not data:
            data = json.loads(output.read_text()) if args.merge and output.is_file() else {}
            data.update({
                "benchmark": "liveavatar",
                "method": "engine session path, device-synchronised stage timers; median of the timed blocks after warm-up",
                "environment": _environment(engine),
                "warmup_blocks": args.warmup,
                "blocks": args.blocks,
            })
            data.setdefault("results", {})
        data.setdefault("engine_build_s", {})["fp8" if fp8 else "bf16"] = round(build_s, 1)
        print(f"liveavatar bench: {engine.parts.description} on {engine.device} ({build_s:.1f} s to build)", flush=True)
        for mode in (m for m in modes if MODES[m][0] == fp8):
            if MODES[mode][1]:
                # what avatar serve compiles with compile=true and the same options (the VAE too, unless
                # compile_vae=false): the benchmark times the server's path
                torch._dynamo.reset()
                mode_kwargs = {"mode": engine.options.compile_mode} if engine.options.compile_mode else {}
                engine.parts.dit.compile_blocks(**mode_kwargs)  # static shapes: each size compiles its own graphs
                if _vae_compiled(engine, mode):
                    engine.parts.codec.compile_decoder()
            for size in sizes:
                t1 = time.perf_counter()
                gpu = GpuSampler(interval_s=2.0)
                try:
                    with gpu.in_thread():
                        result = _bench_size(engine, size, args.aspect, mode, args, profile=not args.no_profile)
                except Exception as exc:  # keep the other modes' results; record what failed
                    result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    print(f"{mode:12s} {size:>8s}: FAILED {result['error'][:300]}", flush=True)
                # clocks, power, clock reasons over the size's run (its compile included): a slow GPU says why
                result["gpu_state"] = gpu.summary()
                result["wall_s"] = round(time.perf_counter() - t1, 1)
                data["results"].setdefault(mode, {})[size] = result
                _write(output, data)
                if "error" not in result:
                    print(
                        f"{mode:12s} {size:>8s} ({result['width']}x{result['height']}): block {result['block_ms_median']} ms "
                        f"(dit {result['dit_ms_median']}, vae {result['vae_decode_ms_median']}, audio "
                        f"{result['audio_features_ms_median']}) = {result['fps']} fps; first block {result['time_to_first_block_s']} s "
                        f"(warm {result['time_to_first_block_warm_s']} s); "
                        f"peak {result.get('peak_gpu_memory_gb', '-')} GB; {result['dit_tflops_achieved']} TFLOP/s; "
                        f"{result['graphs_compiled_in_second_session']} graph(s) compiled in a second session",
                        flush=True,
                    )
        if args.vae_cudnn_benchmark and engine.device.type == "cuda":
            data["vae_decode_cudnn_benchmark"] = _vae_cudnn_benchmark(engine, sizes[-1], args.aspect)
            _write(output, data)
            print(f"vae decode per block, cudnn.benchmark off/on: {data['vae_decode_cudnn_benchmark']}", flush=True)
        engine.close()
        del engine
        torch._dynamo.reset()  # compiled graphs hold the blocks: free the weights before the next engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.liveavatar", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
