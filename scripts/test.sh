#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium chromium-driver)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need_apt+=(nginx libnginx-mod-rtmp)  # RTMP ingest of the push tests
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
