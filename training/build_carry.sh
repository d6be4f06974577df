#!/usr/bin/env bash
# Builds training/carry/: everything the GPU box needs and does not have (it has Python 3.12,
# torch, torchaudio and numpy, and no network). Run on the CPU machine; then hand
# `training/carry` to the GPU run (carry list) and run `bash training/gpu_run.sh` there.
#
#   carry/wheels/   funasr and the packages its SeACo/CT-Transformer import chain and the
#                   product's engine need, for CPython 3.12 manylinux (versions as in .venv)
#   carry/debs/     Debian 12's espeak-ng 1.51 library and data (the version the tests use)
#   carry/libpcaudio.so.0   a no-op stand-in for the sound-output library (stub/pcaudio_stub.c)
#   carry/data/     corpus.json.gz: sentences, splits, vocabulary, hotword traps (corpus.py)
set -euo pipefail
cd "$(dirname "$0")"
PY="${PY:-../.venv/bin/python}"  # another checkout's virtualenv: PY=/path/to/python
CARRY=carry
rm -rf "$CARRY"
mkdir -p "$CARRY/wheels" "$CARRY/debs"

WHEELS=(
  funasr==1.4.16 hydra-core==1.3.8 omegaconf==2.3.1 PyYAML==6.0.4 packaging==26.4 tqdm==4.70.1
  kaldiio==2.18.1 librosa==0.11.0 lazy-loader==0.6 requests==2.34.2 urllib3==2.8.0 idna==3.20
  certifi==2026.10.19.post1 charset-normalizer==3.5.3 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  RapidFuzz==3.14.6 six==1.17.0 soxr==1.1.0 pydantic==2.14.4 pydantic_core==2.50.5
  pydantic-settings==2.16.3 annotated-types==0.8.0 typing-inspection==0.4.5 python-dotenv==1.2.4
  typing_extensions==4.16.0 setuptools==80.9.0
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$CARRY/wheels" "${WHEELS[@]}"
# antlr4-python3-runtime (omegaconf's parser) is published as a source archive only.
"$PY" -m pip wheel -q --no-deps -w "$CARRY/wheels" antlr4-python3-runtime==4.9.3

(cd "$CARRY/debs" && apt-get download espeak-ng-data libespeak-ng1 libsonic0 2>/dev/null)
gcc -shared -fPIC -O2 -Wl,-soname,libpcaudio.so.0 -o "$CARRY/libpcaudio.so.0" stub/pcaudio_stub.c

"$PY" corpus.py --out "$CARRY/data" --testset ../tests/assets/demo-model/testset.json

du -sh "$CARRY" "$CARRY"/*
