#!/usr/bin/env bash
# Create or reuse .venv/ in the checkout and install the server (and, with --dev, the test tools).
# torch is installed first from the pinned CPU build, so that no dependency pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -c 'import torch' 2>/dev/null || $PIP install -q "torch==2.13.0"
extras=""
if [ "${1:-}" = "--dev" ]; then extras="[dev]"; fi
# Skip the resolver when nothing changed since the last install (fast re-runs).
stamp=".venv/.installed$(echo "$extras" | tr -d '[]')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  $PIP install -q -e ".$extras"
  touch "$stamp"
fi
