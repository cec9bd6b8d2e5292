"""One installable package: the wheel built from this checkout, installed into a fresh virtualenv
and run from another folder, serves the browser page, renders a clip, and refuses the GPU engine
with a one-line hint when its extra is not installed.

Installing the base dependencies from PyPI into the fresh virtualenv would take minutes and need
the network, so the wheel is installed there with ``--no-deps`` and the dependencies are borrowed
from the test virtualenv: a ``.pth`` file in the new site-packages appends the test venv's
site-packages folders to ``sys.path``. Path lines of a ``.pth`` come after the new venv's own
site-packages, and ``.pth`` files inside an appended folder are not processed, so the checkout's
editable-install finder is not loaded there and ``import live_avatar`` finds the wheel's copy
(checked below).

The test venv has the ``[liveavatar]`` extra (torch, transformers, diffusers, ...) installed, so
borrowing its site-packages would hide a base install that needs them. A second ``.pth`` file
imports a meta-path finder, first on ``sys.meta_path``, that refuses those modules with
ModuleNotFoundError as if they were not installed: everything run in the new venv is a
base-only install, and ``--engine liveavatar`` must say which extra to install.
"""

from __future__ import annotations

import ast
import email.parser
import os
import re
import shutil
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.inprocess import free_port
from tests.support.server_process import http_json
from tests.support.speech import write_wav

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "live-avatar-server"
EXTRA_MODULES = ("torch", "transformers", "diffusers", "safetensors", "tokenizers", "ftfy")  # the [liveavatar] extra
INSTALL_HINT = "pip install 'live-avatar-server[liveavatar]'"

# Not copied for the build: VCS data, virtualenvs, build output, caches, benchmark results.
_SKIP_AT_ROOT = {".git", ".venv", "build", "dist", "out", ".whl", "bench"}
_SKIP_ANYWHERE = {"__pycache__", ".pytest_cache", ".ruff_cache"}

_BLOCKER = f'''"""Test only: make the [liveavatar] extra's modules unimportable (see tests/integration/test_package.py)."""
import sys

BLOCKED = {EXTRA_MODULES!r}


class _BlockExtra:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a base install)", name=name)
        return None


sys.meta_path.insert(0, _BlockExtra)
'''


def _ignore(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in _SKIP_ANYWHERE or n.endswith(".egg-info")}
    if Path(folder) == REPO_ROOT:
        skip |= _SKIP_AT_ROOT & set(names)
    return skip


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(meta) -> dict[str | None, set[str]]:
    """{None: base requirement names, extra: its names} from a METADATA message."""
    found: dict[str | None, set[str]] = {None: set()}
    for extra in meta.get_all("Provides-Extra") or []:
        found[extra] = set()
    for line in meta.get_all("Requires-Dist") or []:
        name = _normalize(re.split(r"[\s;<>=!~\[(]", line, maxsplit=1)[0])
        extra = re.search(r"extra\s*==\s*[\"']([^\"']+)", line)
        found.setdefault(extra and extra.group(1), set()).add(name)
    return found


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _run(cmd, *, timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout's sources: the build writes build/ and *.egg-info next to them, and a
    stale build/ folder in the checkout could slip old modules into the wheel."""
    src = tmp_path_factory.mktemp("src") / "live-avatar-server"
    shutil.copytree(REPO_ROOT, src, ignore=_ignore)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation and no index: setuptools comes from the test venv ([dev]), nothing is downloaded.
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                "-w", out, source], timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed (no deps), the test venv's packages visible, the extra blocked."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    res = _run([sys.executable, "-m", "venv", "--without-pip", root], timeout=120)
    assert res.returncode == 0, res.stderr
    python = root / "bin" / "python"
    res = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], timeout=60).stdout.strip())
    assert purelib.is_dir() and purelib.is_relative_to(root), purelib
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "_borrowed_test_venv.pth").write_text("".join(f"{p}\n" for p in borrowed))
    (purelib / "_block_liveavatar_extra.py").write_text(_BLOCKER)
    (purelib / "_block_liveavatar_extra.pth").write_text("import _block_liveavatar_extra\n")
    return root


def _env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1",
               VIRTUAL_ENV=str(venv))
    return env


def test_wheel_holds_one_package_with_its_data_and_no_gpu_stack_in_the_base(wheel, source):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        tops = {n.split("/")[0] for n in names}
        dist_infos = [t for t in tops if t.endswith(".dist-info")]
        assert len(dist_infos) == 1 and tops - set(dist_infos) == {"live_avatar"}, sorted(tops)
        meta = email.parser.Parser().parsestr(zf.read(f"{dist_infos[0]}/METADATA").decode())
        entry_points = zf.read(f"{dist_infos[0]}/entry_points.txt").decode()

    package = source / "live_avatar"
    expected = {p.relative_to(source).as_posix() for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    yamls = {n for n in expected if n.endswith(".yaml")}
    client = {n for n in expected if n.startswith("live_avatar/client/")}
    assert {"live_avatar/configs/server.yaml", "live_avatar/client/index.html"} <= yamls | client
    assert any(n.startswith("live_avatar/configs/presets/") for n in yamls)
    assert any(n.startswith("live_avatar/configs/engines/") for n in yamls)
    assert expected - names == set(), "files of live_avatar/ missing from the wheel"

    assert meta["Name"] == DISTRIBUTION
    requires = _requirements(meta)
    assert requires[None], "no base requirements"
    assert requires[None].isdisjoint({"torch", "transformers", "diffusers", "safetensors", "tokenizers"}), sorted(requires[None])
    assert {"torch", "transformers", "diffusers", "safetensors"} <= requires["liveavatar"], requires
    assert "torch" not in requires["dev"], "torch comes with [liveavatar] (installed after the pinned CPU build), not [dev]"
    assert re.search(r"^avatar\s*=\s*live_avatar\.cli\.main:main$", entry_points, re.MULTILINE), entry_points


def test_every_third_party_import_is_a_declared_requirement(wheel, source):
    """live_avatar/ imports only what the wheel requires: the base requirements everywhere, the
    [liveavatar] extra's too inside the liveavatar engine (static: every import statement counts)."""
    from importlib.metadata import packages_distributions

    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        requires = _requirements(email.parser.Parser().parsestr(zf.read(info).decode()))
    providers = {module: {_normalize(d) for d in dists} for module, dists in packages_distributions().items()}
    engine_dir = source / "live_avatar" / "core" / "engines" / "liveavatar"
    # modules that may import an optional extra (guarded: a clear error when it is not installed)
    optional_extras = {source / "live_avatar" / "server" / "outputs" / "virtual_camera.py": "virtualcam"}
    problems = []
    for path in sorted((source / "live_avatar").rglob("*.py")):
        allowed = requires[None] | (requires["liveavatar"] if path.is_relative_to(engine_dir) else set())
        if path in optional_extras:
            allowed = allowed | requires[optional_extras[path]]
        for module in sorted(_imported_modules(path)):
            if module in sys.stdlib_module_names or module == "live_avatar":
                continue
            if module == "bench" and path.name == "bench.py":  # avatar bench runs the checkout's bench/ folder
                continue
            # an optional extra need not be installed here: its module name is its distribution's
            dists = providers.get(module) or ({_normalize(module)} if path in optional_extras else set())
            if not dists & allowed:
                problems.append(f"{path.relative_to(source)}: {module} (from {sorted(providers.get(module, [])) or 'nothing installed'})")
    assert not problems, "imports not covered by the declared requirements:\n" + "\n".join(problems)


def test_fresh_venv_imports_the_wheel_and_not_the_extra(venv, tmp_path):
    code = (
        "import importlib.util, live_avatar\n"
        "print(live_avatar.__file__)\n"
        "try:\n    import torch\nexcept ModuleNotFoundError:\n    print('no torch')\n"
    )
    res = _run([venv / "bin" / "python", "-c", code], timeout=60, cwd=tmp_path, env=_env(venv))
    assert res.returncode == 0, res.stderr
    module_file, torch_line = res.stdout.split("\n")[:2]
    assert Path(module_file).is_relative_to(venv), f"live_avatar imported from {module_file}, not the wheel"
    assert torch_line == "no torch"


def test_installed_serve_answers_the_page_and_healthz(venv, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(venv / "bin" / "avatar"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=tmp_path, env=_env(venv), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, f"avatar serve exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}"
                try:
                    if http_json("GET", f"{url}/healthz", timeout=2.0)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"not healthy after 90 s:\n{log_path.read_text(errors='replace')[-3000:]}"
                time.sleep(0.3)
            status, page = http_json("GET", f"{url}/")
            assert status == 200 and "<title>Live Avatar</title>" in page, (status, str(page)[:300])
            status, script = http_json("GET", f"{url}/static/app.js")
            assert status == 200 and script, status
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert "Traceback" not in log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def clip_inputs(tmp_path_factory) -> tuple[Path, Path]:
    """(astronaut photo from scikit-image, 1.5 s of a syllable-rate modulated tone as a 16 kHz WAV)."""
    import skimage.data

    image = Path(skimage.data.__file__).parent / "astronaut.png"
    if not image.is_file():
        pytest.skip("scikit-image's astronaut.png is not installed")
    t = np.arange(24000) / 16000.0
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    audio = write_wav(tmp_path_factory.mktemp("clip") / "tone.wav", tone.astype(np.float32), 16000)
    return image, audio


def test_installed_generate_renders_a_clip(venv, tmp_path, clip_inputs):
    import av

    image, audio = clip_inputs
    out = tmp_path / "clip.mp4"
    res = _run([venv / "bin" / "avatar", "generate", "--image", image, "--audio", audio, "--preset", "preview",
                "--num_clip", "1", "--output", out.name, "--quiet"], timeout=180, cwd=tmp_path, env=_env(venv))
    assert res.returncode == 0, res.stdout + res.stderr
    assert out.is_file() and out.stat().st_size > 0
    with av.open(str(out)) as container:
        assert container.streams.video and container.streams.audio
        assert sum(1 for _ in container.decode(video=0)) > 0


def _one_line_hint(res: subprocess.CompletedProcess, prefix: str, *, only_line: bool) -> str:
    """The refusal: exit 2, no traceback, one line naming the extra (and torch) last on stderr."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert [line for line in lines if INSTALL_HINT in line] == lines[-1:], res.stderr
    if only_line:
        assert len(lines) == 1, res.stderr
    line = lines[-1]
    assert line.startswith(prefix) and "torch" in line, line
    return line


def test_liveavatar_engine_without_its_extra_says_what_to_install(venv, tmp_path, clip_inputs):
    env = _env(venv)
    res = _run([venv / "bin" / "avatar", "serve", "--engine", "liveavatar", "--tiny", "--host", "127.0.0.1",
                "--port", free_port()], timeout=60, cwd=tmp_path, env=env)
    _one_line_hint(res, "avatar serve: the liveavatar engine cannot start: ", only_line=True)

    image, audio = clip_inputs
    out = tmp_path / "gpu.mp4"
    res = _run([venv / "bin" / "avatar", "generate", "--engine", "liveavatar", "--tiny", "--image", image,
                "--audio", audio, "--preset", "preview", "--output", out.name, "--quiet"], timeout=120, cwd=tmp_path, env=env)
    # only_line=False: OpenCV's libpng may warn about the photo's colour profile on stderr first
    _one_line_hint(res, "error: the liveavatar engine cannot start: ", only_line=False)
    assert not out.exists() and not any(tmp_path.glob("gpu.*")), sorted(p.name for p in tmp_path.iterdir())
