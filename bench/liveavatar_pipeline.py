"""``avatar bench liveavatar --num_gpus_dit N``: the step pipeline's per-rank costs and throughput.

The engine runs with ``num_gpus_dit=N`` (one process per rank, as ``avatar serve``/``generate`` start it).
Two passes over the same session:

* isolated: one block in flight at a time, so no two ranks compute at once: each rank's clean per-block
  compute (front end, its steps, VAE), the hand-off times between ranks (receiver's arrival minus the
  sender's send start, both on the host's monotonic clock) and, from them, the projected block time and
  fps on N real devices: the slowest rank's compute plus its outgoing hand-off;
* pipelined: ``pipeline_depth`` blocks in flight, as the offline renderer keeps them: measured throughput,
  per-rank bubble (idle time between two blocks) and block latency. On N real devices this is the figure;
  with ``--share-gpu`` the ranks share one device, so it only shows that the pipe runs.

``--share-gpu`` puts every rank on one GPU (processes sharing it): full-size 14B shapes and memory per
rank where only one GPU is lent. Memory per rank is each rank's peak allocated bytes (its own CUDA context
not included). Results go to bench/results/liveavatar_pipeline_<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import deque
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _median_ms(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(1000.0 * statistics.median(values), 2) if values else None


def _drive(generator, blocks, depth: int) -> list[dict]:
    """Submit with ``depth`` blocks in flight; returns the generator's per-block traces of these blocks."""
    start = len(generator.traces)
    in_flight: deque = deque()
    for block in [*blocks, *[None] * depth]:
        if block is not None:
            generator.submit(block)
            in_flight.append(block)
        if in_flight and (block is None or len(in_flight) >= depth):
            in_flight.popleft()
            generator.collect()
    return generator.traces[start:]


def _rank_table(traces: list[dict]) -> dict:
    """Per (rank, role): median compute, bubble, outgoing hand-off, peak memory."""
    table: dict[str, dict] = {}
    for trace in traces:
        records = trace["ranks"]
        for i, r in enumerate(records):
            if r["role"] == "collect":
                continue
            entry = table.setdefault(f"rank{r['rank']}_{r['role']}", {"rank": r["rank"], "role": r["role"], "compute": [],
                                                                       "host": [], "device_wait": [],
                                                                       "bubble": [], "handoff": [], "memory": []})
            entry["compute"].append(r.get("compute_s"))
            entry["host"].append(r.get("host_s"))
            entry["device_wait"].append(r.get("device_wait_s"))
            entry["bubble"].append(r.get("bubble_s"))
            nxt = records[i + 1] if i + 1 < len(records) else None
            if nxt is not None and r.get("sent_at") is not None and nxt.get("received_at") is not None:
                entry["handoff"].append(max(0.0, nxt["received_at"] - r["sent_at"]))
            entry["memory"].append(r.get("peak_memory_bytes"))
    out = {}
    for key, e in table.items():
        memory = [m for m in e["memory"] if m is not None]
        out[key] = {"rank": e["rank"], "role": e["role"], "compute_ms": _median_ms(e["compute"]),
                    "host_ms": _median_ms(e["host"]), "device_wait_ms": _median_ms(e["device_wait"]),
                    "bubble_ms": _median_ms(e["bubble"]), "handoff_out_ms": _median_ms(e["handoff"]),
                    "peak_memory_gb": round(max(memory) / 2**30, 2) if memory else None}
    return out


def _busy_per_rank(ranks: dict) -> dict[int, float]:
    """Milliseconds a rank is busy per block: its compute plus its outgoing hand-offs (sends block)."""
    busy: dict[int, float] = {}
    for entry in ranks.values():
        busy[entry["rank"]] = busy.get(entry["rank"], 0.0) + (entry["compute_ms"] or 0.0) + (entry["handoff_out_ms"] or 0.0)
    return busy


def run_pipeline(args: argparse.Namespace) -> int:
    import torch

    from bench.liveavatar import _environment, _portrait, _synthetic_block, _write
    from live_avatar.core.engines import load_engine

    size = (args.sizes or (["128*64"] if args.tiny else ["512*320"]))[0]
    fp8, compiled = {"eager": (False, False), "compiled": (False, True), "fp8-eager": (True, False),
                     "fp8-compiled": (True, True)}[args.modes[0]]
    options = {"device": args.device, "seed": args.seed, "aspect": args.aspect, "size": size, "fp8": fp8,
               "compile": compiled, "compile_vae": compiled, "num_gpus_dit": args.num_gpus_dit, "vae_gpu": args.vae_gpu,
               "share_device": args.share_gpu, "sink_refresh": "keep_motion", "pipeline_timeout_s": 900.0}
    options["tiny" if args.tiny else "random_weights"] = True
    t0 = time.perf_counter()
    engine = load_engine("liveavatar", **options)
    build_s = time.perf_counter() - t0
    pipeline = engine.pipeline
    if pipeline is None:
        print("--num_gpus_dit 1 without --vae_gpu is the single-process engine: run avatar bench liveavatar", flush=True)
        engine.close()
        return 2
    print(f"pipeline bench: {pipeline.plan.describe()} on {engine.device}{' (shared)' if args.share_gpu else ''}; "
          f"{build_s:.1f} s to start", flush=True)
    try:
        generator = engine.new_generator(engine.prepare_avatar(_portrait(args.seed)))
        ctx, la = generator.context_samples, generator.lookahead_samples
        blocks = [_synthetic_block(k, ctx, la) for k in range(args.warmup + 2 * args.blocks)]
        t1 = time.perf_counter()
        _drive(generator, blocks[:args.warmup], 1)  # clip 0, the sink refresh, compiles
        warmup_s = time.perf_counter() - t1
        isolated = _drive(generator, blocks[args.warmup:args.warmup + args.blocks], 1)
        pipelined = _drive(generator, blocks[args.warmup + args.blocks:], generator.pipeline_depth)
        generator.close()
        ranks_isolated, ranks_pipelined = _rank_table(isolated), _rank_table(pipelined)
        busy = _busy_per_rank(ranks_isolated)
        projected_ms = max(busy.values())
        span = pipelined[-1]["collected"] - pipelined[0]["collected"]
        measured_fps = 12.0 * (len(pipelined) - 1) / span if span > 0 else None
        result = {
            "benchmark": "liveavatar_pipeline", "environment": _environment(engine), "size": size,
            "frame": list(engine.size), "mode": args.modes[0], "num_gpus_dit": args.num_gpus_dit,
            "vae_gpu": args.vae_gpu, "share_gpu": args.share_gpu, "plan": pipeline.plan.describe(),
            "sink_refresh": "keep_motion (no drain at the clip-1 refresh)",
            "engine_start_s": round(build_s, 1), "warmup_blocks": args.warmup, "warmup_s": round(warmup_s, 1),
            "blocks": args.blocks,
            "ranks_loaded": pipeline.status()["ranks"],
            "isolated": {"per_rank": ranks_isolated, "busy_ms_per_rank": {str(k): round(v, 2) for k, v in busy.items()},
                         "block_latency_ms": _median_ms([t["collected"] - t["submitted"] for t in isolated])},
            "projected_for_real_devices": {
                "block_ms": round(projected_ms, 1), "fps": round(12000.0 / projected_ms, 1),
                "bottleneck_rank": max(busy, key=busy.get),
                "basis": "slowest rank's isolated compute + its outgoing hand-offs; ranks overlap fully in steady state"},
            "pipelined": {"per_rank": ranks_pipelined, "fps": round(measured_fps, 1) if measured_fps else None,
                          "block_latency_ms": _median_ms([t["collected"] - t["submitted"] for t in pipelined]),
                          "depth": generator.pipeline_depth,
                          "note": "ranks share one device: contention, not the N-device figure" if args.share_gpu else ""},
        }
        if engine.device.type == "cuda":
            result["rank0_peak_memory_gb"] = round(torch.cuda.max_memory_allocated(engine.device) / 2**30, 2)
        tag = "cpu_tiny" if engine.device.type == "cpu" else torch.cuda.get_device_name(engine.device).split()[-1].lower()
        output = args.output or RESULTS_DIR / (f"liveavatar_pipeline_{tag}_n{args.num_gpus_dit}"
                                               f"{'_vae' if args.vae_gpu else ''}{'_shared' if args.share_gpu else ''}.json")
        _write(output, result)
        for key, entry in sorted(ranks_isolated.items()):
            piped = ranks_pipelined.get(key, {})
            print(f"  {key:14s} compute {entry['compute_ms']} ms (host {entry['host_ms']}, device wait "
                  f"{entry['device_wait_ms']}), pipelined {piped.get('compute_ms')} ms (host {piped.get('host_ms')}, "
                  f"device wait {piped.get('device_wait_ms')}); hand-off out {entry['handoff_out_ms']} ms, "
                  f"peak {entry['peak_memory_gb']} GB", flush=True)
        print(f"projected on {args.num_gpus_dit} devices: block {projected_ms:.1f} ms = {12000.0 / projected_ms:.1f} fps; "
              f"pipelined here: {result['pipelined']['fps']} fps, bubble/latency in {output}", flush=True)
        print(json.dumps({"projected_fps": result["projected_for_real_devices"]["fps"], "output": str(output)}))
    finally:
        engine.close()
    return 0
