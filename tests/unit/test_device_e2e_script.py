"""bench/device_e2e.sh: GPU e2e runs that outlast one device call, started detached and collected later.
Run here with a stand-in for ``python3`` (the bench), so the script's own logic is what is tested."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "device_e2e.sh"

FAKE_BENCH = """#!/bin/bash
# the bench's stand-in: record the arguments, take a moment, write --output (and fail for size 1*1);
# the wheel check passes unless FAKE_UNMET says what is unmet
case "$1" in *wheel_check.py) [ -z "${FAKE_UNMET:-}" ] && exit 0; echo "$FAKE_UNMET" >&2; exit 1 ;; esac
out=""; prev=""
for a in "$@"; do [ "$prev" = "--output" ] && out=$a; prev=$a; done
echo "$@" >> "$E2E_DIR/calls.txt"
sleep 0.5
case "$*" in *"--size 1*1 "*) exit 3 ;; esac
echo '{"ok": true}' > "$out"
"""


@pytest.fixture
def env(tmp_path):
    if shutil.which("setsid") is None:
        pytest.skip("needs setsid (util-linux)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_BENCH)
    (bin_dir / "python3").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "E2E_DIR": str(tmp_path / "e2e"),
            "OUT": str(tmp_path / "out"), "E2E_POLL_S": "2"}


def _script(env, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_runs_start_one_after_another_detached_and_are_collected_by_name(env) -> None:
    started = _script(env, "start-seq", "600", "big:320*512", "small:256*384:lookahead_s=0,duration=300,sink_refresh=false",
                      "fp8=true", "compile=true")
    assert started.returncode == 0 and "start-seq" in started.stdout
    deadline = str(int(time.time()) + 30)
    second = _script(env, "wait", "small", deadline)  # queued behind the first: waits for its pid file
    assert second.returncode == 0 and "small running: no" in second.stdout
    first = _script(env, "wait", "big", deadline)
    assert first.returncode == 0 and "big running: no" in first.stdout
    out, e2e = Path(env["OUT"]), Path(env["E2E_DIR"])
    assert {p.name for p in out.iterdir()} == {"big.json", "big.log", "small.json", "small.log"}  # no pid files
    calls = (e2e / "calls.txt").read_text().splitlines()
    assert [c.split("--size ")[1].split()[0] for c in calls] == ["320*512", "256*384"]  # in the order given
    assert "--engine-option fp8=true --engine-option compile=true --duration 600" in calls[0]
    # a run's own options come after the shared ones, and only for that run
    assert ("--engine-option fp8=true --engine-option compile=true --engine-option lookahead_s=0"
            " --engine-option sink_refresh=false --duration 300") in calls[1]  # duration=: its own length
    assert all(f"--output {e2e}/{n}.json" in c for c, n in zip(calls, ("big", "small"), strict=True))
    # every run's files in one archive: a device call brings back 8 files at most
    for f in out.iterdir():
        f.unlink()
    collected = _script(env, "collect")
    assert collected.returncode == 0 and [p.name for p in out.iterdir()] == ["e2e-runs.tar.gz"]
    listed = subprocess.run(["tar", "-tzf", str(out / "e2e-runs.tar.gz")], capture_output=True, text=True, check=True)
    assert {"big.json", "big.log", "small.json", "small.log", "seq.log"} <= set(listed.stdout.split())
    log = (e2e / "seq.log").read_text()
    assert "big exited 0" in log and "small exited 0" in log and log.index("big exited") < log.index("start small")


def test_a_failed_run_does_not_stop_the_next_and_an_unknown_name_is_refused(env) -> None:
    assert _script(env, "start", "bad", "1*1", "60", "fp8=true").returncode == 0  # start: one run, the same runner
    deadline = str(int(time.time()) + 30)
    assert _script(env, "wait", "bad", deadline).returncode == 0
    assert "bad exited 3" in (Path(env["E2E_DIR"]) / "seq.log").read_text()
    _script(env, "start-seq", "60", "bad:1*1", "good:256*384")
    assert _script(env, "wait", "good", str(int(time.time()) + 30)).returncode == 0
    assert (Path(env["OUT"]) / "good.json").exists()
    # a name run again: wait follows the new run, not the finished one's pid file
    (Path(env["OUT"]) / "good.json").unlink()
    _script(env, "start-seq", "60", "bad:1*1", "good:256*384")
    assert _script(env, "wait", "good", str(int(time.time()) + 30)).returncode == 0
    assert (Path(env["OUT"]) / "good.json").exists() and (Path(env["E2E_DIR"]) / "calls.txt").read_text().count("256*384") == 2
    missing = _script(env, "wait", "never", str(int(time.time()) + 30))
    assert missing.returncode == 1 and "no run never" in missing.stdout


def test_sleep_ends_when_no_run_is_alive(env) -> None:
    _script(env, "start-seq", "60", "one:256*384")
    t0 = time.monotonic()
    slept = _script(env, "sleep", str(int(time.time()) + 600), timeout=120)
    assert slept.returncode == 0 and "no run alive" in slept.stdout
    assert time.monotonic() - t0 < 30  # not the 600 s asked: the runs had ended


def test_start_seq_starts_nothing_when_the_wheels_do_not_fit(env) -> None:
    refused = _script({**env, "FAKE_UNMET": "pyOpenSSL needs cryptography<51,>=49.0.0, found 51.0.1"},
                      "start-seq", "600", "big:320*512", "fp8=true")
    assert refused.returncode == 1 and "cryptography<51" in refused.stderr
    e2e = Path(env["E2E_DIR"])
    assert not (e2e / "seq.pid").exists() and not (e2e / "calls.txt").exists()


def test_the_wheel_check_names_each_unmet_requirement() -> None:
    from importlib.metadata import PackageNotFoundError

    from bench.wheel_check import unmet

    requirements = {"pyOpenSSL": ["cryptography<51,>=49.0.0", "typing-extensions>=4.9; python_version < '3.8'"],
                    "aiortc": ["av<17,>=14", "pyee>=13", "crc32c; extra == 'crc'"]}
    installed = {"cryptography": "51.0.1", "av": "16.0.1"}

    def version_of(name: str) -> str:
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    def requires_of(dist: str) -> list[str]:
        if dist not in requirements:
            raise PackageNotFoundError(dist)
        return requirements[dist]

    found = unmet(["pyOpenSSL", "aiortc", "aioice"], requires_of=requires_of, version_of=version_of)
    # markers that do not apply (an old Python, an extra) are left out
    assert found == ["pyOpenSSL needs cryptography<51,>=49.0.0, found 51.0.1", "aiortc needs pyee>=13: not installed",
                     "aioice: not installed"]
    installed.update(cryptography="50.0.2", pyee="13.0.1")
    assert unmet(["pyOpenSSL", "aiortc"], requires_of=requires_of, version_of=version_of) == []
