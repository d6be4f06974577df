#!/usr/bin/env bash
# Tuned launcher for the ASR service (web UI + HTTP API on one port).
#
#   ./run.sh                          # detect the GPU, pick configs/<gpu>.yaml, serve on 127.0.0.1:7860
#   ./run.sh --config configs/a10.yaml --port 8000 --host 0.0.0.0
#   CUDA_VISIBLE_DEVICES=1 ./run.sh   # serve from the second GPU (its profile is picked)
#
# Flags (all passed to webui.py; see `python webui.py --help`):
#   --port N  --host ADDR  --model DIR|ID  --config FILE|NAME|auto  --max-batch-size N
#   --no-gradio-queue  --share  --no-autolaunch  --enable-xformers (= memory-efficient SDPA attention)
#   --no-ui  --http-workers N (API only: N HTTP processes feeding one batching process)
#
# This script only sets the environment and flags; profile choice, warm-up and serving are in Python
# (asr/web/launch.py). The model is loaded and warmed up before the port accepts connections.
set -euo pipefail
cd "$(dirname "$0")"

# Grow the CUDA allocator's segments instead of fragmenting on variable batch shapes.
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
# Load CUDA kernels on first use: faster start, less memory.
export CUDA_MODULE_LOADING="${CUDA_MODULE_LOADING:-LAZY}"
# CUDA_VISIBLE_DEVICES is respected as given (the profile follows the first visible GPU).

# The interpreter: $PYTHON if given, else the project's virtualenv, else python3.
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

args=("$@")
have_config=0
for a in "$@"; do
  case "$a" in
    --config|--config=*) have_config=1 ;;
    --share) echo "WARNING: --share opens a public link: anyone with it can use this service." >&2 ;;
  esac
done
# Without --config (and without ASR_CONFIG) the profile is chosen from the detected GPU.
if [[ $have_config -eq 0 && -z "${ASR_CONFIG:-}" ]]; then args+=(--config auto); fi

exec "$PYTHON" webui.py "${args[@]}"
