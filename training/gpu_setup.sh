# Sourced by gpu_run.sh and gpu_seaco.sh once ROOT, CARRY, WORK and `stamp` are set: sets PY,
# makes the carried wheels importable (GPU box only: the CPU machine's .venv has them) and
# unpacks espeak-ng from the carried Debian packages into $WORK/espeak (both), exporting
# ASR_ESPEAK_LIB and ASR_ESPEAK_DATA for training/espeak.py.
if [ "${DRY_RUN:-0}" = 1 ]; then
  PY="${PY:-$ROOT/.venv/bin/python}"  # a worktree without its own .venv: PY=/path/to/.venv/bin/python
else
  PY="${PY:-python3}"
  stamp "installing carried wheels"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$CARRY"/wheels/*.whl
  else  # a wheel is a zip laid out for site-packages
    "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
      "$WORK/site" "$CARRY"/wheels/*.whl
  fi
  # funasr imports distutils, which Python 3.12 dropped: setuptools' shim provides it.
  cat > "$WORK/site/sitecustomize.py" <<'PYEOF'
try:
    import distutils  # noqa: F401
except ImportError:
    import setuptools  # noqa: F401  (installs the distutils shim)
PYEOF
  export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi

stamp "unpacking espeak-ng (Debian packages) into $WORK/espeak"
for deb in "$CARRY"/debs/*.deb; do
  if command -v dpkg >/dev/null; then
    dpkg -x "$deb" "$WORK/espeak"
  else
    "$PY" "$ROOT/training/unpack_deb.py" "$deb" "$WORK/espeak"
  fi
done
LIBDIR="$WORK/espeak/usr/lib/x86_64-linux-gnu"
cp "$CARRY/libpcaudio.so.0" "$LIBDIR/"
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ASR_ESPEAK_LIB="$LIBDIR/libespeak-ng.so.1" ASR_ESPEAK_DATA="$LIBDIR"
"$PY" -c "import sys; sys.path.insert(0, '$ROOT/training'); import espeak; print('espeak-ng ok:', espeak.shared().phonemes('北京'))"
