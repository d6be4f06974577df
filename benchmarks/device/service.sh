#!/usr/bin/env bash
# The HTTP service under load (#11), 4 HTTP workers, one fresh server per variant, variants in the
# order given; each serves 30 s WAV to 150 and 300 clients and 30 s mp3 to 150 (tests/load.py, 6
# client processes), SECONDS each, and records the GPU memory each process holds under load:
#   bash benchmarks/device/service.sh SECONDS NAME[:VAR=VALUE,...] ...
#   e.g. bash benchmarks/device/service.sh 20 base served:ASR_LONGFORM__PUNC_IN_ENGINE=true,ASR_LONGFORM__VAD_IN_ENGINE=true
# Lines to stdout and $OUT/service.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/device/setup.sh || exit 1
source benchmarks/device/serve.sh
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
SECONDS_EACH=$1; shift
echo "$(gpu_name), $(git rev-parse --short HEAD 2> /dev/null || echo '?')"
port=8200
for spec in "$@"; do
  name=${spec%%:*}; vars=(); [[ $spec == *:* ]] && IFS=, read -ra vars <<< "${spec#*:}"
  port=$((port + 1))
  ready=$(serve "$port" 4 "${vars[@]}") || { echo "$ready"; continue; }
  echo "$name: $ready"; ready=${ready##*ready in }; ready=${ready% s}
  for load in wav:150 wav:300 mp3:150; do
    fmt=${load%%:*} clients=${load#*:}
    # The GPU memory of each process, sampled through the load: the largest reading per process.
    (while true; do nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits; sleep 1; done) \
      > "/tmp/gpu-mem-$port" 2> /dev/null &
    sampler=$!
    $PY -m tests.load --url "http://127.0.0.1:$port" --pid "$(cat "/tmp/server-$port.pid")" \
      --duration "$SECONDS_EACH" --concurrency "$clients" --clip-seconds 30 --format "$fmt" \
      --processes "${PROCESSES:-6}" > "/tmp/load-$port.out" 2> "/tmp/load-$port.err"
    kill "$sampler" 2> /dev/null; wait "$sampler" 2> /dev/null
    $PY - "/tmp/load-$port.out" "/tmp/gpu-mem-$port" "$name" "$fmt" "$clients" "$ready" <<'PYEOF' | tee -a "$OUT/service.jsonl"
import json, sys
out, mem, name, fmt, clients, ready = sys.argv[1:]
text = open(out).read()
if "{" not in text:  # the load client failed: its stderr is in /tmp/load-PORT.err
    print(json.dumps({"variant": name, "load": f"{clients} clients, 30 s {fmt}", "error": "no report from tests/load.py"}))
    sys.exit(0)
summary = json.loads(text[text.index("{"): text.rindex("}") + 1])
peak: dict[str, int] = {}
for line in open(mem):
    pid, used = (part.strip() for part in line.split(","))
    if used.isdigit():
        peak[pid] = max(peak.get(pid, 0), int(used))
keep = ("audio_s_per_s", "ok", "errors", "busy_503", "latency_p50_s", "latency_p99_s", "rss_mb_peak", "server_cpu_s")
print(json.dumps({"variant": name, "load": f"{clients} clients, 30 s {fmt}", "ready": ready,
                  **{k: summary.get(k) for k in keep},
                  "gpu_mib_by_process": sorted(peak.values(), reverse=True), "gpu_mib_total": sum(peak.values())}))
PYEOF
  done
  stop_server "$port"
done
