"""bench/gpu_state.py: nvidia-smi's answers parsed into the benchmarks' GPU state.

There is no GPU here: the runner below answers as nvidia-smi 580 does on an H200 (csv, noheader,
nounits: values joined by ", "; "[N/A]" for what a GPU does not report; an error and exit status 2
for a field the driver does not know).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bench import gpu_state

H200 = {
    "name": "NVIDIA H200", "memory.total": "143771", "clocks.max.sm": "1980", "power.limit": "700.00",
    "power.max_limit": "700.00", "persistence_mode": "Enabled", "compute_mode": "Default",
    "memory.used": "51419", "clocks.sm": "1755", "clocks.mem": "3201", "power.draw": "[N/A]",
    "temperature.gpu": "61", "utilization.gpu": "97",
    "clocks_event_reasons.active": "0x0000000000000004",
}


class FakeSmi:
    def __init__(self, fields: dict[str, str], apps: str = "4242, 51200\n") -> None:
        self.fields, self.apps, self.calls = dict(fields), apps, []

    def __call__(self, args: list[str]) -> str:
        self.calls.append(args)
        if args[0].startswith("--query-compute-apps="):
            return self.apps
        names = args[0].removeprefix("--query-gpu=").split(",")
        unknown = [n for n in names if n not in self.fields]
        if unknown:  # what nvidia-smi prints (with exit status 2), raised as _run_nvidia_smi does
            raise OSError(f'Field "{unknown[0]}" is not a valid field to query.')
        return ", ".join(self.fields[n] for n in names) + "\n"


def test_snapshot_names_units_and_missing_values() -> None:
    state = gpu_state.snapshot(run=FakeSmi(H200))
    assert state["name"] == "NVIDIA H200" and state["memory_total_mb"] == 143771.0
    assert state["sm_clock_mhz"] == 1755.0 and state["sm_clock_max_mhz"] == 1980.0
    assert state["power_w"] is None  # "[N/A]"
    assert state["clock_reasons"] == ["sw_power_cap"]
    assert state["compute_processes"] == [{"pid": 4242, "used_mb": 51200.0}]


@pytest.mark.parametrize("mask, names", [
    ("0x0000000000000000", []),
    ("0x0000000000000001", ["gpu_idle"]),
    ("0x0000000000000044", ["sw_power_cap", "hw_thermal_slowdown"]),
    ("0x0000000000001008", ["hw_slowdown", "other_0x1000"]),
    ("[N/A]", []),
])
def test_clock_reasons_decoded(mask: str, names: list[str]) -> None:
    assert gpu_state.reasons(mask) == names


def test_older_driver_field_name_is_tried() -> None:
    fields = {k: v for k, v in H200.items() if k != "clocks_event_reasons.active"}
    fields["clocks_throttle_reasons.active"] = "0x0000000000000020"
    assert gpu_state.query_reasons(run=FakeSmi(fields)) == ["sw_thermal_slowdown"]
    del fields["clocks_throttle_reasons.active"]
    assert gpu_state.query_reasons(run=FakeSmi(fields)) is None


def test_a_short_answer_is_an_error_not_a_misread() -> None:
    with pytest.raises(OSError, match="fields"):
        gpu_state.query({"clocks.sm": "a", "clocks.mem": "b"}, run=lambda args: "1755\n")
    state = gpu_state.snapshot(run=lambda args: "1755\n")
    assert "error" in state


def test_sampler_in_a_thread_summarises_clocks_and_reasons() -> None:
    smi = FakeSmi(H200)
    sampler = gpu_state.GpuSampler(interval_s=0.01, run=smi)
    with sampler.in_thread():
        deadline = time.monotonic() + 5
        while len(sampler.samples) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        smi.fields["clocks.sm"] = "1305"  # throttled from here on
        smi.fields["clocks_event_reasons.active"] = "0x0000000000000044"
        n = len(sampler.samples)
        while len(sampler.samples) < n + 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = sampler.summary()
    assert summary["start"]["name"] == "NVIDIA H200" and sampler.gpu_name == "NVIDIA H200"
    assert summary["samples"] >= 8
    assert summary["sm_clock_mhz"]["min"] == 1305.0 and summary["sm_clock_mhz"]["max"] == 1755.0
    assert summary["power_w"] is None  # never reported
    seen = summary["clock_reasons_samples"]
    assert seen["sw_power_cap"] == summary["samples"] and 4 <= seen["hw_thermal_slowdown"] < summary["samples"]
    count = len(sampler.samples)
    time.sleep(0.05)
    assert len(sampler.samples) == count  # the thread stopped with the with-block


def test_async_sampler_and_memory_growth() -> None:
    smi = FakeSmi(H200)
    sampler = gpu_state.GpuSampler(interval_s=0.01, run=smi)

    async def main() -> None:
        task = asyncio.create_task(sampler.run(time.monotonic()))
        while len(sampler.samples) < 3:
            await asyncio.sleep(0.01)
        smi.fields["memory.used"] = "51619"
        n = len(sampler.samples)
        while len(sampler.samples) < n + 2:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(main(), 10))
    assert sampler.growth_mb(0.0) == 200.0
    assert sampler.memory_at(0.0)[0][1] == 51419.0


def test_without_nvidia_smi_nothing_is_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpu_state.snapshot() is None
    sampler = gpu_state.GpuSampler()
    assert not sampler.available
    with sampler.in_thread():
        pass
    asyncio.run(sampler.run(time.monotonic()))  # returns at once
    assert sampler.summary() is None and sampler.growth_mb(0.0) is None
