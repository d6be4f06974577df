#!/usr/bin/env bash
# Live captions at N streams (#14), one fresh server per variant, variants in the order given,
# each replayed PASSES times (the first pass on a fresh server includes its warm-up):
#   bash benchmarks/device/live.sh STREAMS PASSES NAME[:VAR=VALUE,...] ...
#   e.g. bash benchmarks/device/live.sh 300 2 base tick10:ASR_LIVE__TICK_MS=10 base2
# Reports to $OUT/live-NAME.json (the client's JSON per pass, server stage figures included).
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/device/setup.sh || exit 1
source benchmarks/device/serve.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
STREAMS=$1 PASSES=$2; shift 2
echo "$(gpu_name), $(git rev-parse --short HEAD 2> /dev/null || echo '?')"
port=8100
for spec in "$@"; do
  name=${spec%%:*}; vars=(); [[ $spec == *:* ]] && IFS=, read -ra vars <<< "${spec#*:}"
  port=$((port + 1))
  serve "$port" 4 "${vars[@]}" || continue
  $PY -m tests.live_load --url "ws://127.0.0.1:$port/api/live" --wav .gpu/live-speech.wav \
    --streams "$STREAMS" --processes "${PROCESSES:-12}" ${GPU_FLAG---gpu} --passes "$PASSES" > "$OUT/live-$name.json" 2> "/tmp/live-$name.err"
  $PY - "$OUT/live-$name.json" "$name" <<'PYEOF'
import json, re, sys
text = open(sys.argv[1]).read()
for block in re.split(r"(?m)^(?=\{)", text):
    if not block.strip():
        continue
    r = json.loads(block)
    print(sys.argv[2], "pass", r["pass"], "final p50/p95", r["final_p50_ms"], r["final_p95_ms"],
          "partial p50/p95", r["partial_p50_ms"], r["partial_p95_ms"], "finals", r["finals"],
          "dropped", r["dropped_finals"], "errors", r["error_count"], "gpu", r["gpu_util_mean"])
PYEOF
  stop_server "$port"
done
