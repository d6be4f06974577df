#!/usr/bin/env bash
# Cold start of the command line on one 10 s mp3 (#11): the floor (`import torch` + CUDA), then
# ROUNDS rounds of the variants in turn (fresh process each, warm page cache), a timeline each.
#   bash benchmarks/device/cold.sh ROUNDS [VARIANT ...]    (variants of cold.py; default: default nowarm)
# Lines to stdout and $OUT/cold.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/device/setup.sh || exit 1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT" /tmp/cold
ROUNDS=$1; shift; VARIANTS=("${@:-default nowarm}"); [ $# -eq 0 ] && VARIANTS=(default nowarm)
[ -f /tmp/cold/ten.mp3 ] || $PY -c "
import numpy as np, soundfile as sf
from pathlib import Path
from asr.devtools.bench_e2e import write_mp3
audio, rate = sf.read('.gpu/live-speech.wav', dtype='float32')
write_mp3(Path('/tmp/cold/ten.mp3'), audio[: 10 * rate])"
for _ in 1 2; do
  t0=$(date +%s.%N); $PY -c "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()"
  echo "{\"variant\": \"floor: import torch + CUDA context\", \"gone\": $(awk "BEGIN{print $(date +%s.%N) - $t0}")}" | tee -a "$OUT/cold.jsonl"
done
for round in $(seq "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    rm -rf /tmp/cold/out; t0=$(date +%s.%N)
    line=$($PY benchmarks/device/cold.py "$t0" "$v" -- transcribe /tmp/cold/ten.mp3 --model /tmp/models/full \
      --config h100 --punc-model /tmp/models/punc --output-dir /tmp/cold/out --quiet 2> /tmp/cold/err | tail -1)
    gone=$(awk "BEGIN{print $(date +%s.%N) - $t0}")
    echo "${line%\}}, \"round\": $round, \"gone\": $gone}" | tee -a "$OUT/cold.jsonl"
  done
done
if [ -n "${PROFILE_PY_SPY:-}" ]; then  # one more run of the first variant under py-spy (raw stacks, native frames)
  rm -rf /tmp/cold/out
  py-spy record --native --rate 250 --format raw -o "$OUT/cold-py-spy.txt" -- $PY benchmarks/device/cold.py \
    "$(date +%s.%N)" "${VARIANTS[0]}" -- transcribe /tmp/cold/ten.mp3 --model /tmp/models/full --config h100 \
    --punc-model /tmp/models/punc --output-dir /tmp/cold/out --quiet > /dev/null 2>&1
  echo "py-spy: $(wc -l < "$OUT/cold-py-spy.txt") stacks in $OUT/cold-py-spy.txt"
fi
