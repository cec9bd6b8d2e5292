#!/bin/bash
# A GPU e2e run that outlasts one device call (the device tool allows 600 s a call; a 10-minute run
# with its start-up takes ~12 min): start it detached, keep the call alive with progress, and collect
# it in the next call. The next call must follow within the machine's idle release (30 s), or the
# machine, and the run, are gone.
#   bench/device_e2e.sh start NAME SIZE DURATION [engine options...]   e.g. '320*512' 600 fp8=true compile=true
#   bench/device_e2e.sh start-seq DURATION NAME:SIZE[:OPT,...]... [engine options...]   the runs one after another,
#       detached; options after a run's size are for that run only, duration=S its own length
#       (e.g. 'la0:320*512:lookahead_s=0,duration=300')
#       (a 10-minute run held an H100 ~12 min, start-up included: two fit one session's 30 min of device
#       time as calls of start-seq + sleep, sleep, wait NAME1 + sleep, wait NAME2, each within 30 s of the last)
#   bench/device_e2e.sh sleep DEADLINE       progress every minute until epoch second DEADLINE, or until no run is alive
#   bench/device_e2e.sh wait NAME DEADLINE   wait for NAME until DEADLINE, copy its files to $OUT
#   bench/device_e2e.sh collect              every run's files as one $OUT/e2e-runs.tar.gz (a call brings back 8 files at most)
# Files: /tmp/e2e/NAME.{json,log,server.log,pid}, /tmp/e2e/seq.{log,pid} (the runner).
# Carry .whl (bash ../shared/tools/device-wheels.sh .whl ftfy==6.3.1 wcwidth 'cryptography<51': the liveavatar
# extra's ftfy is not on the GPU machine; the script takes the newest cryptography, which pyOpenSSL 26.4 refuses,
# and aiortc's DTLS then fails silently) and .speech-cache (AVATAR_SPEECH_CACHE, filled by a run where espeak-ng is).
# start-seq checks that the media stack's requirements hold (bench/wheel_check.py) before it starts anything.
set -u
E2E=${E2E_DIR:-/tmp/e2e}  # the runs' files (tests point it elsewhere)
mkdir -p $E2E "$OUT"
case "$1" in
start)  # one run: start-seq with one name
  name=$2 size=$3 dur=$4; shift 4
  exec bash "$0" start-seq "$dur" "$name:$size" "$@" ;;
start-seq)
  shift
  # a wheel set whose versions do not fit fails minutes later, or silently (DTLS): refuse it now
  python3 "$(dirname "$0")/wheel_check.py" aiortc aioice pyOpenSSL av || exit 1
  echo "$(date -u +%H:%M:%S) start-seq $*"
  for a in "$@"; do case "$a" in *:*) rm -f "$E2E/${a%%:*}.pid" ;; esac; done  # no stale pid for wait to find
  # its own session, as start's runs: the runs outlive the device call that started them
  setsid nohup bash "$0" run-seq "$@" > $E2E/seq.log 2>&1 < /dev/null &
  echo $! > $E2E/seq.pid ;;
run-seq)  # start-seq's detached runner: one run after another, in the foreground
  dur=$2; shift 2
  specs=(); opts=()
  for a in "$@"; do case "$a" in *:*) specs+=("$a") ;; *) opts+=(--engine-option "$a") ;; esac; done
  for spec in "${specs[@]}"; do
    name=${spec%%:*} rest=${spec#*:}
    size=${rest%%:*} own=() run_dur=$dur
    if [ "$rest" != "$size" ]; then
      IFS=, read -ra o <<< "${rest#*:}"
      for x in "${o[@]}"; do case "$x" in duration=*) run_dur=${x#duration=} ;; *) own+=(--engine-option "$x") ;; esac; done
    fi
    echo "$(date -u +%H:%M:%S) start $name size $size duration $run_dur ${opts[*]} ${own[*]}"
    python3 -m live_avatar.cli.main bench e2e --engine liveavatar --random-weights --size "$size" \
       "${opts[@]}" "${own[@]}" --duration "$run_dur" --start-timeout 600 --server-log $E2E/$name.server.log \
       --output $E2E/$name.json > $E2E/$name.log 2>&1 < /dev/null &
    echo $! > $E2E/$name.pid
    wait $!; rc=$?
    echo "$(date -u +%H:%M:%S) $name exited $rc"
  done ;;
wait)
  name=$2; limit=$3
  # a run queued by start-seq has no pid file until it starts
  while [ ! -e $E2E/$name.pid ] && [ -e $E2E/seq.pid ] && kill -0 "$(cat $E2E/seq.pid)" 2>/dev/null \
        && [ "$(date +%s)" -lt "$limit" ]; do sleep 5; done
  [ -e $E2E/$name.pid ] || { echo "no run $name on this machine (a fresh one?)"; exit 1; }
  while kill -0 "$(cat $E2E/$name.pid)" 2>/dev/null && [ "$(date +%s)" -lt "$limit" ]; do sleep 5; done
  echo "$(date -u +%H:%M:%S) $name running: $(kill -0 "$(cat $E2E/$name.pid)" 2>/dev/null && echo yes || echo no)"
  tail -25 $E2E/$name.log
  # the run's JSON (or its partial), log and server log: a call brings back 8 files at most
  for f in $E2E/$name.json $E2E/$name.partial.json $E2E/$name.log $E2E/$name.server.log; do
    [ -e "$f" ] && cp "$f" "$OUT"/
  done; true ;;
collect)
  # one file, however many runs: their JSONs, partial JSONs and logs (tar -xzf it where it lands)
  (cd $E2E && tar -czf "$OUT/e2e-runs.tar.gz" $(ls *.json *.log 2>/dev/null)) && ls -l "$OUT/e2e-runs.tar.gz" ;;
sleep)
  poll=${E2E_POLL_S:-60}
  while [ "$(( $(date +%s) + poll ))" -lt "$2" ]; do
    alive=0; for p in $E2E/*.pid; do [ -e "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null && alive=1; done
    if [ $alive = 0 ]; then echo "no run alive"; break; fi
    sleep "$poll"; echo "--- $(date -u +%H:%M:%S)"; for f in $E2E/*.log; do tail -c 300 "$f" | tail -2; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null
    # every minute: a call cut at its limit still returns what is under $OUT
    cp $E2E/*.log $E2E/*.partial.json "$OUT"/ 2>/dev/null
  done
  cp $E2E/*.log $E2E/*.partial.json "$OUT"/ 2>/dev/null || true ;;
esac
