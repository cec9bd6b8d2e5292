"""The pipeline bench's arithmetic on hand-made per-block records (the bench itself runs on GPUs)."""

from __future__ import annotations

import pytest

bench = pytest.importorskip("bench.liveavatar_pipeline")


def _trace(t0: float) -> dict:
    # rank 0: front 10 ms + steps 0-1 100 ms, hand-off 4 ms; rank 1: steps 2-3 90 ms + VAE 60 ms, frames back 3 ms
    return {"block": 0, "submitted": t0, "collected": t0 + 0.267, "ranks": [
        {"rank": 0, "role": "front", "compute_s": 0.010, "start": t0, "end": t0 + 0.010, "sent_at": t0 + 0.010},
        {"rank": 0, "role": "steps", "compute_s": 0.100, "received_at": None, "start": t0 + 0.010, "end": t0 + 0.110,
         "sent_at": t0 + 0.110, "bubble_s": 0.02, "peak_memory_bytes": 40 * 2**30},
        {"rank": 1, "role": "steps", "compute_s": 0.090, "host_s": 0.006, "device_wait_s": 0.084,
         "received_at": t0 + 0.114, "start": t0 + 0.114,
         "end": t0 + 0.204, "sent_at": t0 + 0.204, "bubble_s": 0.05, "peak_memory_bytes": 30 * 2**30},
        {"rank": 1, "role": "vae", "compute_s": 0.060, "received_at": None, "start": t0 + 0.204, "end": t0 + 0.264,
         "sent_at": t0 + 0.264},
        {"rank": 0, "role": "collect", "received_at": t0 + 0.267},
    ]}


def test_rank_table_and_projection():
    table = bench._rank_table([_trace(0.0), _trace(1.0)])
    assert table["rank0_steps"]["compute_ms"] == pytest.approx(100.0)
    assert table["rank0_steps"]["handoff_out_ms"] == pytest.approx(4.0)
    assert table["rank1_vae"]["handoff_out_ms"] == pytest.approx(3.0)
    assert table["rank0_front"]["handoff_out_ms"] is None  # the same rank's next stage: no transfer
    assert table["rank1_steps"]["bubble_ms"] == pytest.approx(50.0)
    assert table["rank1_steps"]["host_ms"] == pytest.approx(6.0)  # issuing the work vs waiting for the device
    assert table["rank1_steps"]["device_wait_ms"] == pytest.approx(84.0)
    assert table["rank0_steps"]["host_ms"] is None  # records without the split (older traces)
    assert table["rank0_steps"]["peak_memory_gb"] == pytest.approx(40.0)
    busy = bench._busy_per_rank(table)
    assert busy[0] == pytest.approx(10 + 100 + 4) and busy[1] == pytest.approx(90 + 60 + 3)
