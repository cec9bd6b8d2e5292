#!/bin/bash
# A GPU e2e run that outlasts one device call (the device tool allows 600 s a call; a 10-minute run
# with its warm-up takes ~14 min): start it detached, keep the call alive with progress, and collect
# it in the next call. The next call must follow within the machine's idle release (30 s), or the
# machine, and the run, are gone.
#   bench/device_e2e.sh start NAME SIZE DURATION [engine options...]   e.g. '320*512' 600 fp8=true compile=true
#   bench/device_e2e.sh sleep DEADLINE       progress every minute until epoch second DEADLINE, or until no run is alive
#   bench/device_e2e.sh wait NAME DEADLINE   wait for NAME until DEADLINE, copy its files to $OUT
# Files: /tmp/e2e/NAME.{json,log,server.log,pid}.
# Carry .whl (bash ../shared/tools/device-wheels.sh .whl ftfy==6.3.1 wcwidth: the liveavatar extra's ftfy is
# not on the GPU machine) and .speech-cache (AVATAR_SPEECH_CACHE, filled by a run where espeak-ng is).
set -u
mkdir -p /tmp/e2e "$OUT"
case "$1" in
start)
  name=$2 size=$3 dur=$4; shift 4
  opts=(); for o in "$@"; do opts+=(--engine-option "$o"); done
  echo "$(date -u +%H:%M:%S) start $name size $size duration $dur ${opts[*]}"
  setsid nohup python3 -m live_avatar.cli.main bench e2e --engine liveavatar --random-weights --size "$size" \
     "${opts[@]}" --duration "$dur" --start-timeout 600 --server-log /tmp/e2e/$name.server.log \
     --output /tmp/e2e/$name.json > /tmp/e2e/$name.log 2>&1 < /dev/null &
  echo $! > /tmp/e2e/$name.pid ;;
wait)
  name=$2; limit=$3
  [ -e /tmp/e2e/$name.pid ] || { echo "no run $name on this machine (a fresh one?)"; exit 1; }
  while kill -0 "$(cat /tmp/e2e/$name.pid)" 2>/dev/null && [ "$(date +%s)" -lt "$limit" ]; do sleep 5; done
  echo "$(date -u +%H:%M:%S) $name running: $(kill -0 "$(cat /tmp/e2e/$name.pid)" 2>/dev/null && echo yes || echo no)"
  tail -25 /tmp/e2e/$name.log
  cp /tmp/e2e/$name.* "$OUT"/ 2>/dev/null ;;
sleep)
  while [ "$(( $(date +%s) + 60 ))" -lt "$2" ]; do
    alive=0; for p in /tmp/e2e/*.pid; do [ -e "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null && alive=1; done
    if [ $alive = 0 ]; then echo "no run alive"; break; fi
    sleep 60; echo "--- $(date -u +%H:%M:%S)"; for f in /tmp/e2e/*.log; do tail -c 300 "$f" | tail -2; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    # every minute: a call cut at its limit still returns what is under $OUT
    cp /tmp/e2e/*.log /tmp/e2e/*.partial.json "$OUT"/ 2>/dev/null
  done
  cp /tmp/e2e/*.log /tmp/e2e/*.partial.json "$OUT"/ 2>/dev/null ;;
esac
