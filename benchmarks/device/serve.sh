#!/usr/bin/env bash
# A server for device benchmarks (source after setup.sh): the full-size model with configs/h100.yaml,
# punctuation on the GPU, N HTTP workers, detached (setsid) so it outlives a call; its log in /tmp.
#   serve PORT WORKERS [VAR=VALUE ...]    waits for /healthz (at most 240 s) and prints the seconds
#   stop_server PORT
serve() {
  local port=$1 workers=$2; shift 2
  local t0; t0=$(date +%s.%N)
  env ASR_LONGFORM__PUNC_MODEL="${PUNC:-/tmp/models/punc}" ASR_LONGFORM__PUNC_DEVICE=auto "$@" \
    setsid $PY webui.py --no-ui --http-workers "$workers" --config "${CONFIG:-h100}" --model "${MODEL:-/tmp/models/full}" \
    --port "$port" --data-dir "/tmp/data-$port" > "/tmp/server-$port.log" 2>&1 < /dev/null &
  echo $! > "/tmp/server-$port.pid"
  for _ in $(seq 480); do
    if curl -sf "http://127.0.0.1:$port/healthz" > /dev/null; then
      echo "server :$port ($*) ready in $(awk "BEGIN{print $(date +%s.%N) - $t0}") s"; return 0
    fi
    sleep 0.5
  done
  echo "server :$port did not start"; tail -30 "/tmp/server-$port.log"; return 1
}
stop_server() {
  local pid; pid=$(cat "/tmp/server-$1.pid")
  kill -INT -- "-$pid" 2> /dev/null || kill -INT "$pid"
  for _ in $(seq 60); do kill -0 "$pid" 2> /dev/null || return 0; sleep 0.5; done
  kill -KILL -- "-$pid" 2> /dev/null || true
}
