"""What the GPU was doing during a benchmark: clocks, power, temperature, throttling, other processes.

The same code on two lent H200s, half an hour apart: one live session kept up (4 frames repeated in
330 s), the next took 526 ms a block (its DiT 453 ms against the benchmark's 366 ms) and fell
behind; nothing in the results said why. ``nvidia-smi`` can: a GPU held below its boost clock by a
power cap or heat, or shared with another process, shows it here. Every benchmark
that runs on a GPU stores a snapshot at its start and a summary of samples taken during the run.

Nothing here needs CUDA in this process; without ``nvidia-smi`` everything answers None.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# nvidia-smi --query-gpu fields -> our names (units: MiB, MHz, W, C, %)
SNAPSHOT_FIELDS = {
    "name": "name",
    "memory.total": "memory_total_mb",
    "clocks.max.sm": "sm_clock_max_mhz",
    "power.limit": "power_limit_w",
    "power.max_limit": "power_max_limit_w",
    "persistence_mode": "persistence_mode",
    "compute_mode": "compute_mode",
}
SAMPLE_FIELDS = {
    "memory.used": "memory_used_mb",
    "clocks.sm": "sm_clock_mhz",
    "clocks.mem": "mem_clock_mhz",
    "power.draw": "power_w",
    "temperature.gpu": "temperature_c",
    "utilization.gpu": "utilization_pct",
}
# Why the clocks are below their maximum: the driver's bit mask. Newer drivers call the field
# clocks_event_reasons, older ones clocks_throttle_reasons.
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")
REASON_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

Runner = Callable[[list[str]], str]


def _run_nvidia_smi(args: list[str]) -> str:
    out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise OSError(out.stdout.strip() or out.stderr.strip() or f"nvidia-smi exited {out.returncode}")
    return out.stdout


def available() -> bool:
    return shutil.which("nvidia-smi") is not None


def _value(text: str) -> Any:
    text = text.strip()
    if not text or text.startswith("[") or text in {"N/A", "Not Supported"}:
        return None  # "[N/A]", "[Not Supported]": the GPU does not report it
    try:
        return float(text)
    except ValueError:
        return text


def reasons(mask: Any) -> list[str]:
    """Names of the bits set in a clocks-reasons mask ("0x0000000000000004" -> ["sw_power_cap"])."""
    if not isinstance(mask, str):
        return []
    try:
        value = int(mask, 16)
    except ValueError:
        return []
    named = [name for bit, name in REASON_BITS.items() if value & bit]
    unknown = value & ~sum(REASON_BITS)
    return named + ([f"other_0x{unknown:x}"] if unknown else [])


def query(fields: dict[str, str], index: int = 0, run: Runner = _run_nvidia_smi) -> dict[str, Any]:
    """One GPU's fields, by our names; values nvidia-smi does not report are None."""
    line = run([f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", str(index)])
    values = line.strip().splitlines()[0].split(",") if line.strip() else []
    if len(values) != len(fields):
        raise OSError(f"nvidia-smi answered {line.strip()!r} for {len(fields)} fields")
    return {ours: _value(v) for ours, v in zip(fields.values(), values, strict=True)}


def query_reasons(index: int = 0, run: Runner = _run_nvidia_smi) -> list[str] | None:
    for field in REASON_FIELDS:
        try:
            mask = query({field: "mask"}, index, run)["mask"]
        except OSError:
            continue  # this driver does not know the field's name: try the older one
        return reasons(mask)
    return None


def compute_processes(run: Runner = _run_nvidia_smi) -> list[dict[str, Any]]:
    """Processes with a CUDA context on any GPU: pid and used memory (MiB)."""
    text = run(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
    procs = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            procs.append({"pid": int(parts[0]), "used_mb": _value(parts[1])})
    return procs


def snapshot(index: int = 0, run: Runner = _run_nvidia_smi) -> dict[str, Any] | None:
    """The GPU's identity, limits and present state, and the processes using it; None without nvidia-smi."""
    if run is _run_nvidia_smi and not available():
        return None
    try:
        state = query({**SNAPSHOT_FIELDS, **SAMPLE_FIELDS}, index, run)
        state["clock_reasons"] = query_reasons(index, run)
        state["compute_processes"] = compute_processes(run)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    state["time_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return state


class GpuSampler:
    """GPU 0's memory, clocks, power, temperature and clock reasons every few seconds during a run."""

    def __init__(self, interval_s: float = 5.0, index: int = 0, run: Runner = _run_nvidia_smi) -> None:
        self.interval_s = interval_s
        self.index = index
        self._run = run
        self.available = run is not _run_nvidia_smi or available()
        self.samples: list[dict[str, Any]] = []  # each with "t": seconds since the run's start
        self.start: dict[str, Any] | None = None

    @property
    def gpu_name(self) -> str | None:
        return (self.start or {}).get("name")

    def sample(self, t: float) -> None:
        row = query(SAMPLE_FIELDS, self.index, self._run)
        row["clock_reasons"] = query_reasons(self.index, self._run)
        row["t"] = t
        self.samples.append(row)

    def _loop(self, stop: threading.Event, t_start: float) -> None:
        """The start snapshot, then a sample every ``interval_s`` until ``stop`` (or nvidia-smi fails)."""
        self.start = snapshot(self.index, self._run)
        while not stop.is_set():
            try:
                self.sample(time.monotonic() - t_start)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return
            stop.wait(self.interval_s)

    async def run(self, t_start: float) -> None:
        """Sample until cancelled (the e2e benchmark's tasks)."""
        if not self.available:
            return
        stop = threading.Event()
        try:
            await asyncio.to_thread(self._loop, stop, t_start)
        finally:
            stop.set()  # cancelled: the thread ends at its next wake-up

    @contextlib.contextmanager
    def in_thread(self) -> Iterator["GpuSampler"]:
        """Sample on a thread while the ``with`` body runs (for synchronous benchmarks)."""
        if not self.available:
            yield self
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(stop, time.monotonic()), name="gpu-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=15)

    def memory_at(self, from_s: float) -> list[tuple[float, float]]:
        return [(s["t"], s["memory_used_mb"]) for s in self.samples
                if s["t"] >= from_s and s.get("memory_used_mb") is not None]

    def growth_mb(self, from_s: float) -> float | None:
        later = self.memory_at(from_s)
        return None if len(later) < 2 else later[-1][1] - later[0][1]

    def summary(self) -> dict[str, Any] | None:
        """Medians and extremes over the run, the clock reasons seen and in how many samples."""
        if not self.samples:
            return None if self.start is None else {"start": self.start}

        def column(name: str) -> np.ndarray:
            return np.asarray([s[name] for s in self.samples if isinstance(s.get(name), float)])

        def stats(name: str) -> dict[str, float] | None:
            values = column(name)
            if values.size == 0:
                return None
            return {"p50": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}

        seen = Counter(reason for s in self.samples for reason in s.get("clock_reasons") or [])
        return {
            "start": self.start,
            "samples": len(self.samples),
            "interval_s": self.interval_s,
            **{name: stats(name) for name in SAMPLE_FIELDS.values()},
            "clock_reasons_samples": dict(seen),
        }
