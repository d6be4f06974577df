#!/usr/bin/env bash
# What users run on a folder of clips and on long recordings (#11), with where the time goes:
#   bash benchmarks/device/e2e.sh [STEP ...]   (default: folder long1 long10 profile)
# STEP: folder, folder-inproc (the engine in the pipeline's process), folder:SECTION.KEY=VALUE (one
# setting changed), workers:N[:SECTION.KEY=VALUE] (the folder through N file workers), long1,
# long10 (the ten files in one pipeline), long1-replay (the engine in the pipeline's process, its
# calls replayed alone after: eagerly, then graphed; torch.profiler's tables of the eager replay in
# $OUT/long1-eager-profile.txt), long1-first (the engine in the pipeline's process, its first call
# profiled: $OUT/long1-first-profile.txt), timeline:FILES:PASSES[:FRAMES,TOKENS] (FILES
# long files PASSES times through one pipeline, the engine in the pipeline's process; the graphs' padding steps),
# long10-workers:N (the ten through N file workers, the
# CLI's loop), profile. workers:N and long10-workers:N take settings after a colon, joined by
# "+": workers:4:longform.punc_in_engine=true+longform.vad_in_engine=true. env:NAME=VALUE exports a
# setting for the steps after it (env:ASR_LONGFORM__VAD_IN_ENGINE=true long1), unenv:NAME drops it.
# Inputs (300 mp3 clips, ten 60-min mp3) made once under /tmp/e2e; the engine in a process of its
# own as the command line runs it. `profile` repeats the folder and the ten files under py-spy
# (raw stacks of every process, on-CPU samples). Lines to stdout and $OUT/e2e.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/device/setup.sh || exit 1
echo "gpu: $(gpu_name)" >&2
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
STEPS=("${@:-folder long1 long10 profile}"); [ $# -eq 0 ] && STEPS=(folder long1 long10 profile)
SPEECH="${SPEECH:-.gpu/live-speech.wav}" MODEL_DIR="${MODEL:-/tmp/models/full}" PUNC_DIR="${PUNC:-/tmp/models/punc}"
export PATH="/tmp/site/bin:$PATH"
# long_timeline.py reads models/full and /tmp/e2e/punc.
mkdir -p models /tmp/e2e; [ -e models/full ] || ln -s "$MODEL_DIR" models/full
[ -e /tmp/e2e/punc ] || ln -s "$PUNC_DIR" /tmp/e2e/punc
if [ ! -f /tmp/e2e/long/long09.mp3 ]; then
  t0=$(date +%s.%N)
  $PY -c "
from pathlib import Path
from asr.devtools.bench_e2e import _speech, make_inputs
make_inputs(Path('/tmp/e2e'), _speech('$SPEECH'), 300, 60.0, 10)" || exit 1
  echo "inputs made in $(awk "BEGIN{print $(date +%s.%N) - $t0}") s" >&2
fi
FOLDER=(benchmarks/folder_timeline.py --model "$MODEL_DIR" --speech "$SPEECH" --punc-model "$PUNC_DIR" --work /tmp/e2e)
# N:SECTION.KEY=VALUE+SECTION.KEY=VALUE... -> extra=(--set ... --set ...) (none without a colon)
sets() { extra=(); [[ $1 == *:* ]] || return 0; local item; IFS=+ read -ra items <<< "${1#*:}"
  for item in "${items[@]}"; do extra+=(--set "$item"); done; }
for step in "${STEPS[@]}"; do
  case $step in
    folder) $PY "${FOLDER[@]}" --passes 3 | tee -a "$OUT/e2e.jsonl" ;;
    folder-inproc) $PY "${FOLDER[@]}" --passes 3 --in-process | tee -a "$OUT/e2e.jsonl" ;;
    folder:*) $PY "${FOLDER[@]}" --passes 3 --set "${step#folder:}" | tee -a "$OUT/e2e.jsonl" ;;
    workers:*) spec=${step#workers:}; sets "$spec"
      $PY "${FOLDER[@]}" --passes 3 --workers "${spec%%:*}" "${extra[@]}" | tee -a "$OUT/e2e.jsonl" ;;
    long10-workers:*) spec=${step#long10-workers:}; sets "$spec"
      $PY "${FOLDER[@]}" --passes 2 --folder /tmp/e2e/long --workers "${spec%%:*}" "${extra[@]}" \
      | tee -a "$OUT/e2e.jsonl" ;;
    env:*) export "${step#env:}"; echo "{\"env\": \"${step#env:}\"}" | tee -a "$OUT/e2e.jsonl" ;;
    unenv:*) unset "${step#unenv:}"; echo "{\"unenv\": \"${step#unenv:}\"}" | tee -a "$OUT/e2e.jsonl" ;;
    long1) $PY benchmarks/long_timeline.py 1 --engine-process | tee -a "$OUT/e2e.jsonl" ;;
    long10) $PY benchmarks/long_timeline.py 10 --engine-process | tee -a "$OUT/e2e.jsonl" ;;
    long1-first) $PY benchmarks/long_timeline.py 1 --profile-first="$OUT/long1-first-profile.txt" \
      | tee -a "$OUT/e2e.jsonl" ;;
    timeline:*) IFS=: read -r _ files passes buckets <<< "$step"
      $PY benchmarks/long_timeline.py "$files" --passes="$passes" ${buckets:+--buckets="$buckets"} \
      | tee -a "$OUT/e2e.jsonl" ;;
    long1-replay) $PY benchmarks/long_timeline.py 1 --replay --profile-eager="$OUT/long1-eager-profile.txt" \
      | tee -a "$OUT/e2e.jsonl" ;;
    profile)
      py-spy record --subprocesses --rate 200 --format raw -o "$OUT/folder-py-spy.txt" -- \
        $PY "${FOLDER[@]}" --passes 3 | tee -a "$OUT/e2e.jsonl"
      py-spy record --subprocesses --rate 200 --format raw -o "$OUT/long10-py-spy.txt" -- \
        $PY benchmarks/long_timeline.py 10 --engine-process | tee -a "$OUT/e2e.jsonl" ;;
  esac
done
