"""PauseWatch (server/pause_watch.py) and the e2e bench's stall attribution (bench/stalls.py)."""

from __future__ import annotations

import asyncio
import gc
import time

import numpy as np
import pytest

from bench.stalls import attribute_stalls
from live_avatar.server.pause_watch import PauseWatch


async def test_a_blocked_event_loop_is_recorded_with_its_start_and_length():
    reported = []
    watch = PauseWatch(interval_s=0.01, threshold_s=0.05, on_pause=lambda kind, s: reported.append((kind, s)))
    watch.start()
    try:
        await asyncio.sleep(0.05)
        blocked_at = time.monotonic()
        time.sleep(0.2)  # a callback that blocks the loop
        await asyncio.sleep(0.05)
    finally:
        await watch.stop()
    loops = [p for p in watch.events if p.kind == "loop"]
    assert len(loops) == 1, list(watch.events)
    pause = loops[0]
    assert 150 <= pause.ms <= 400 and blocked_at - 0.02 <= pause.at <= blocked_at + 0.02, pause
    summary = watch.summary()
    assert summary["loop_pauses"] == 1 and summary["loop_pause_max_ms"] == pause.ms
    assert ("loop", pytest.approx(pause.ms / 1000.0)) in reported  # reported from the watch's task
    assert watch.summary(since=time.monotonic())["loop_pauses"] == 0  # none since now


async def test_garbage_collections_are_timed_and_the_callback_is_removed_on_stop():
    reported = []
    watch = PauseWatch(threshold_s=0.0, on_pause=lambda kind, s: reported.append(kind))
    watch.start()
    try:
        gc.collect()
        await asyncio.sleep(0.03)  # the watch's task reports it
    finally:
        await watch.stop()
    assert any(p.kind == "gc2" and p.ms > 0 for p in watch.events), list(watch.events)
    assert "gc2" in reported and watch.summary()["gc_pauses"] >= 1
    count = len(watch.events)
    gc.collect()
    assert len(watch.events) == count and watch._on_gc not in gc.callbacks


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        PauseWatch(interval_s=0)


def test_each_stall_is_put_down_to_the_pause_that_covers_it():
    """Frames every 40 ms with three gaps: one covered by a server loop pause, one by a peer collection that
    covers only a small part of it (unexplained), one by nothing."""
    times = list(np.arange(0.0, 1.0, 0.04)) + list(np.arange(1.25, 2.0, 0.04)) + list(np.arange(2.3, 3.0, 0.04)) \
        + list(np.arange(3.5, 4.0, 0.04))
    arrivals = [100.0 + t for t in times]
    pauses = {
        "server": [[100.0 + 1.0, 230.0, "loop"]],
        "peer": [[100.0 + 2.0, 30.0, "gc2"], [100.0 + 0.5, 80.0, "gc0"]],  # the second: no gap there
    }
    out = attribute_stalls(arrivals, pauses, t0=100.0)
    stalls = out["stalls"]
    assert [round(s["at_s"], 2) for s in stalls] == [0.96, 1.97, 2.98]
    assert [s["cause"] for s in stalls] == ["server_loop", "unexplained", "unexplained"]
    assert stalls[1]["pauses_ms"] == {"peer_gc2": 30.0}
    assert out["causes"] == {"server_loop": 1, "unexplained": 2}
    assert attribute_stalls([1.0], pauses)["stalls"] == []
    pauses["server"].append([100.0 + 3.0, 480.0, "send"])  # the server's sender waited for a frame
    assert attribute_stalls(arrivals, pauses, t0=100.0)["causes"] == {"server_loop": 1, "unexplained": 1, "server_send": 1}
