#!/usr/bin/env bash
# Wheels a GPU box without network needs to run the service, the benches and py-spy, for the
# Python 3.12 that holds its CUDA PyTorch (torch, torchaudio, numpy, onnxruntime, uvloop, httpx,
# prometheus-client and pyyaml are already there). Versions are the ones this checkout's .venv
# holds, so the box runs what the tests ran.
#
#   bash benchmarks/device_wheels.sh [DIR]      (default .whl; about 57 MB)
#
# On the box: python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#             export PYTHONPATH=/tmp/site:.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.whl}"
PY=.venv/bin/python
NAMES=(
  funasr hydra-core omegaconf kaldiio soundfile cffi pycparser soxr av kaldi-native-fbank
  pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
  librosa wetext kaldifst silero-vad fastapi fastapi-offline starlette uvicorn websockets httptools
  python-multipart rapidfuzz typing-extensions annotated-doc opentelemetry-api contractions textsearch
  anyascii pyahocorasick
)
pins=()
for name in "${NAMES[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] && pins+=("$name==$version") || echo "not in .venv, skipped: $name" >&2
done
mkdir -p "$DIR"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64 -d "$DIR" "${pins[@]}" py-spy
# antlr4-python3-runtime (omegaconf's parser) is published as a source archive only.
"$PY" -m pip wheel -q --no-deps -w "$DIR" antlr4-python3-runtime==4.9.3
# Silero's wheel carries eight variants of its network (11 MB); the product reads two.
"$PY" - "$DIR" <<'PYEOF'
import sys, zipfile
from pathlib import Path
for wheel in Path(sys.argv[1]).glob("silero_vad-*.whl"):
    slim = wheel.with_suffix(".slim")
    keep = ("silero_vad/data/silero_vad.onnx", "silero_vad/data/silero_vad.jit")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not item.filename.startswith("silero_vad/data/") or item.filename in keep:
                dst.writestr(item, src.read(item))
    slim.replace(wheel)
PYEOF
du -sh "$DIR"
