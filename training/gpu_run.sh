#!/usr/bin/env bash
# One command: synthesise the speech, train the ASR and punctuation models, export them in
# funasr's format and measure them. Runs from the repository root or anywhere.
#
#   GPU box:  bash training/gpu_run.sh            (needs training/carry from build_carry.sh)
#   dry run:  DRY_RUN=1 bash training/gpu_run.sh  (this CPU machine: same steps, tiny sizes)
#   a second round: ASR_INIT=tests/assets/demo-model/asr ASR_LR=1e-3 bash training/gpu_run.sh  (the ASR model
#             continues from those weights and their CMVN; then training/gpu_seaco.sh again)
#             ASR_SEED=N renders the corpus anew (other voices, rates, noise) for such a round
#   size:     ASR_SIZE=deep trains that size of train_asr.py's SIZES (default demo)
#   tones:    TONE_FRAMES=1 adds the tonal-syllable frame classifier (train_asr.py --tone-frames)
#
# Results go to $OUT (default training/out), at most 8 files, each under 16 MB:
#   asr_model.pt, punc_model.pt, models_rest.tar.gz (every other file of both model dirs),
#   metrics.json, logs.json, run.log
# Then, on the CPU machine: .venv/bin/python training/install_model.py <that folder>
#
# Budget on one H200 (16 cores): setup ~20 s, synthesis ~110 s, ASR training until FINISH_S
# (1,060 s after the start) with the punctuation model training beside it (PUNC_TRAIN_S, 400 s),
# export and evaluation ~40 s.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARRY="${CARRY:-$ROOT/training/carry}"
OUT="${OUT:-$ROOT/training/out}"
WORK="${WORK:-$(mktemp -d /tmp/asr-train.XXXXXX)}"
mkdir -p "$OUT" "$WORK/models"
exec > >(tee "$OUT/run.log") 2>&1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

if [ "${DRY_RUN:-0}" = 1 ]; then
  SIZE=dry; DEVICE=cpu; ASR_TRAIN_S="${ASR_TRAIN_S:-240}"; PUNC_TRAIN_S="${PUNC_TRAIN_S:-60}"
  EXTRA=(--limit "${LIMIT:-600}" --workers 2 --batch-audio-s 60 --log-every 10)
  PUNC_EXTRA=(--batch-size 64 --log-every 20)
  EVAL=(--device cpu --dtypes fp32 --limit "${EVAL_LIMIT:-40}")
else
  SIZE=demo; DEVICE=cuda; ASR_TRAIN_S="${ASR_TRAIN_S:-900}"; PUNC_TRAIN_S="${PUNC_TRAIN_S:-400}"
  # ASR training ends by T0 + FINISH_S whatever synthesis took; evaluation and packing follow
  # (about 18 minutes in all: start it detached, e.g. with setsid, where commands are limited to
  # 10 minutes).
  EXTRA=(--batch-audio-s "${BATCH_AUDIO_S:-2400}" --log-every 25 --finish-by "$(( T0 + ${FINISH_S:-1060} ))"
         ${LIMIT:+--limit "$LIMIT"})
  PUNC_EXTRA=(--batch-size 512 --log-every 100)
  EVAL=(--device cuda --dtypes fp32 bf16 fp16)
fi
# Sets PY; the carried wheels (GPU box) and espeak-ng.
source "$ROOT/training/gpu_setup.sh"

CORPUS="$CARRY/data/corpus.json.gz"
stamp "punctuation model: training for $PUNC_TRAIN_S s in the background"
"$PY" training/train_punc.py --corpus "$CORPUS" --out "$WORK/models/punc" --size "$SIZE" --device "$DEVICE" \
  --train-seconds "$PUNC_TRAIN_S" --log "$WORK/punc_log.json" "${PUNC_EXTRA[@]}" > "$WORK/punc.out" 2>&1 &
PUNC_PID=$!

stamp "ASR model: synthesis, then training for $ASR_TRAIN_S s"
"$PY" training/train_asr.py --corpus "$CORPUS" --out "$WORK/models/asr" --size "${ASR_SIZE:-$SIZE}" --device "$DEVICE" \
  --train-seconds "$ASR_TRAIN_S" --log "$WORK/asr_log.json" "${EXTRA[@]}" \
  ${ASR_INIT:+--init "$ASR_INIT"} ${ASR_LR:+--lr "$ASR_LR"} ${ASR_SEED:+--seed "$ASR_SEED"} ${TONE_FRAMES:+--tone-frames}
stamp "waiting for the punctuation model"
wait "$PUNC_PID" || { cat "$WORK/punc.out"; exit 1; }
tail -3 "$WORK/punc.out"

# The models go to $OUT before the evaluation, so a command cut off at its time limit still
# returns them (evaluate.py can then make metrics.json on the CPU machine).
stamp "packing the models into $OUT"
cp "$WORK/models/asr/model.pt" "$OUT/asr_model.pt"
cp "$WORK/models/punc/model.pt" "$OUT/punc_model.pt"
tar czf "$OUT/models_rest.tar.gz" -C "$WORK/models" --exclude model.pt asr punc
"$PY" - "$WORK" "$OUT/logs.json" <<'EOF'
import json, sys
work, out = sys.argv[1], sys.argv[2]
logs = {name: json.load(open(f"{work}/{name}_log.json")) for name in ("asr", "punc")}
json.dump(logs, open(out, "w"), indent=1, ensure_ascii=False)
EOF

stamp "evaluating with the product's engine"
"$PY" training/evaluate.py "$WORK/models/asr" --testset "$CORPUS" --out "$WORK/metrics.json" "${EVAL[@]}"
cp "$WORK/metrics.json" "$OUT/metrics.json"
ls -la "$OUT"
stamp "done"
