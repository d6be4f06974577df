#!/usr/bin/env bash
# First steps of a device benchmark on the GPU box (nothing can be downloaded there), from the
# repository root, sourced by the other scripts here:
#   - the carried wheels into /tmp/site (made here by `bash benchmarks/device_wheels.sh`, carry .whl);
#   - the full-size random model and a CT-Transformer of the released shape in /tmp/models;
#   - the live test's speech is carried in .gpu (`python -m tests.live_load --make-wav .gpu/live-speech.wav`).
# A call carries at most 64 MiB: the tracked tree (26 MB, 21 MB of it the demonstration model's
# weights, which no device benchmark reads) and the wheels (60 MB) are more. For the call, take the
# weights out of the index (`git rm --cached tests/assets/demo-model/asr/model.pt`, the path in
# .git/info/exclude; `git reset -q tests/assets/demo-model` after) and leave py-spy's wheel out
# unless a step profiles.
# Each step is skipped when a warm machine already has its result.
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}" CUDA_MODULE_LOADING=LAZY
PY="${PY:-python3}"
if [ ! -d /tmp/site ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
fi
[ -f /tmp/models/full/model.pt ] || $PY -m asr make-model /tmp/models/full --size full > /dev/null || return 1
if [ ! -f /tmp/models/punc/model.pt ]; then
  $PY -c "from pathlib import Path; from asr.devtools.bench_e2e import make_full_punc as m; m(Path('/tmp/models/punc'), Path('/tmp/models/full'))" || return 1
fi
gpu_name() { nvidia-smi 2> /dev/null --query-gpu=name,driver_version --format=csv,noheader; }
if [ -n "${PROFILE_PY_SPY:-}" ] && [ -x /tmp/site/bin/py-spy ]; then export PATH="/tmp/site/bin:$PATH"; fi
