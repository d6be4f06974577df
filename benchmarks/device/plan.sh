#!/usr/bin/env bash
# #11's next device run in one go: the served networks (longform.punc_in_engine and
# longform.vad_in_engine) against the workers' own, on every row they touch, plus the GPU test of
# the engine process's networks. About 12-13 minutes, longer than one call may run, so the plan runs
# detached on the box and later calls collect it:
#   bash benchmarks/device/plan.sh start; bash benchmarks/device/plan.sh wait 555   (first call)
#   bash benchmarks/device/plan.sh wait 560                                          (the next, at once:
#                                                        a machine stays warm only 30 s after a call)
# `wait N` waits at most N s for the plan's end, copies its log and result lines to $OUT and prints
# the log's tail. The plan logs to /tmp/plan/log; its steps write their lines under /tmp/plan/out.
# Prepare the carry first (64 MiB at most): setup.sh says how.
set -uo pipefail
cd "$(dirname "$0")/../.."
AB=longform.punc_in_engine=true+longform.vad_in_engine=true
SERVED=ASR_LONGFORM__PUNC_IN_ENGINE=true,ASR_LONGFORM__VAD_IN_ENGINE=true

plan() {
  echo "== start $(date +%T)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nproc; lscpu | grep 'Model name'
  source benchmarks/device/setup.sh || { echo "== setup failed"; return 1; }
  $PY -c "import torch; print('torch', torch.__version__)"
  echo "== gpu test $(date +%T)"
  $PY -m pytest -q -p no:cacheprovider tests/test_engine_process.py -k gpu 2>&1 | tail -5
  echo "== folder A/B/A/B $(date +%T)"
  bash benchmarks/device/e2e.sh workers:4 "workers:4:$AB" workers:4 "workers:4:$AB"
  echo "== long1 A/B/A $(date +%T)"
  bash benchmarks/device/e2e.sh long1 env:ASR_LONGFORM__PUNC_IN_ENGINE=true env:ASR_LONGFORM__VAD_IN_ENGINE=true \
    long1 unenv:ASR_LONGFORM__PUNC_IN_ENGINE unenv:ASR_LONGFORM__VAD_IN_ENGINE long1
  echo "== long10 A/B $(date +%T)"
  bash benchmarks/device/e2e.sh long10-workers:4 "long10-workers:4:$AB"
  echo "== service A/B $(date +%T)"
  bash benchmarks/device/service.sh 20 base "served:$SERVED"
}

case "${1:-}" in
  start)
    # Every step after setup needs CUDA; on a machine without it the plan would only print tracebacks.
    nvidia-smi -L > /dev/null 2>&1 || { echo "no NVIDIA GPU here: the plan is for the device machine" >&2; exit 1; }
    mkdir -p /tmp/plan/out
    # setsid: the plan outlives the call that started it.
    export OUT=/tmp/plan/out AB SERVED
    setsid nohup bash -c "$(declare -f plan); plan; echo \"== PLAN DONE \$(date +%T)\"" \
      > /tmp/plan/log 2>&1 < /dev/null &
    sleep 2; echo "plan started, log /tmp/plan/log" ;;
  wait)
    [[ ${2:-} =~ ^[0-9]+$ ]] || { echo "wait takes the seconds to wait: $0 wait SECONDS" >&2; exit 2; }
    [ -f /tmp/plan/log ] || { echo "no plan has started on this machine (a fresh machine: start it again)" >&2; exit 1; }
    for _ in $(seq "$2"); do
      grep -q "PLAN DONE" /tmp/plan/log 2> /dev/null && break; sleep 1
    done
    OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
    cp /tmp/plan/log "$OUT/plan.log" 2> /dev/null; cp /tmp/plan/out/*.jsonl "$OUT/" 2> /dev/null
    # The load client's per-second lines would crowd out the rest of the tail.
    grep -v '^{"t"' /tmp/plan/log | tail -c 11000 ;;
  *) echo "usage: $0 start | wait SECONDS" >&2; exit 2 ;;
esac
