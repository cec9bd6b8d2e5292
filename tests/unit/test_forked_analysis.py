"""bench/forked.py: an analysis run in a forked child sees the data as it was at the fork, returns its
result or its error, and a cancelled one leaves no child behind."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from bench.forked import run_forked

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")


async def test_the_child_sees_the_data_as_it_was_at_the_fork_and_returns_its_result():
    received = [1.0, 2.0, 3.0]

    def analyse():
        time.sleep(0.3)  # the parent appends meanwhile
        return {"n": len(received), "sum": sum(received), "pid": os.getpid()}

    task = asyncio.create_task(run_forked(analyse))
    await asyncio.sleep(0.1)
    received.append(100.0)
    result = await task
    assert result["n"] == 3 and result["sum"] == 6.0
    assert result["pid"] != os.getpid()


async def test_the_event_loop_keeps_running_while_the_child_computes():
    def busy():  # pure Python: in a thread this would hold the parent's GIL throughout
        end = time.monotonic() + 0.6
        n = 0
        while time.monotonic() < end:
            n += 1
        return n

    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert await run_forked(busy) > 0
    finally:
        ticker.cancel()
    assert ticks >= 10  # the loop ran its ticks while it waited (0.6 s of them)


async def test_an_error_in_the_child_is_raised_with_its_message():
    def fails():
        raise ValueError("too early: no frames back yet")

    with pytest.raises(RuntimeError, match="ValueError: too early"):
        await run_forked(fails)


async def test_a_child_that_dies_without_a_result_is_an_error_not_a_hang():
    with pytest.raises(RuntimeError, match="without a result"):
        await asyncio.wait_for(run_forked(os._exit, 3), timeout=30)


async def test_cancelling_kills_and_reaps_the_child(tmp_path):
    pid_file = tmp_path / "pid"

    def slow():
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)

    task = asyncio.create_task(run_forked(slow))
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        await asyncio.sleep(0.02)
    pid = int(pid_file.read_text())
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 10
    with pytest.raises(ChildProcessError):  # killed and already reaped
        os.waitpid(pid, os.WNOHANG)


async def test_a_failed_fork_is_an_error_and_leaks_no_pipe(monkeypatch):
    def no_fork():
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(RuntimeError, match="could not fork"):
        await run_forked(sum, [1, 2])
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


def test_the_loop_lag_benchmark_measures_both_ways(tmp_path, capsys):
    from bench import analysis_loop_lag

    out = tmp_path / "lag.json"
    assert analysis_loop_lag.main(["--seconds", "30", "--repeats", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    for mode in ("thread", "forked"):
        run = result["runs"][mode][0]
        assert run["analysis_ok"] and run["analysis_s"] > 0 and run["loop_lag_max_ms"] >= 0
    assert "forked" in capsys.readouterr().out
    assert analysis_loop_lag.main(["--seconds", "5"]) == 2  # too short to analyse: a clear error
