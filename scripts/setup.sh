#!/usr/bin/env bash
# Create or reuse .venv/ in the checkout and install the package into it (editable).
#   bash scripts/setup.sh         the server and the CPU (lite) engine only: no torch
#   bash scripts/setup.sh --dev   everything the tests exercise: the test tools and the [liveavatar]
#                                 extra; torch==2.13.0 (the CPU build) is installed FIRST, so that
#                                 no dependency makes pip resolve torch and pull a multi-GB CUDA build
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
case "${1:-}" in
  "") mode=base; target="." ;;
  --dev) mode=dev; target=".[dev,liveavatar]" ;;
  *) echo "usage: bash scripts/setup.sh [--dev]" >&2; exit 2 ;;
esac
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
if [ "$mode" = dev ]; then
  # any torch 2.13.x already there is kept (e.g. a CUDA build installed by hand); another version is replaced
  .venv/bin/python -c 'import sys; from importlib.metadata import version; sys.exit(not version("torch").startswith("2.13."))' \
    2>/dev/null || $PIP install -q "torch==2.13.0"
fi
# Skip the resolver when nothing changed since the last install of this mode (fast re-runs).
stamp=".venv/.installed-$mode"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  $PIP install -q -e "$target"
  touch "$stamp"
fi
