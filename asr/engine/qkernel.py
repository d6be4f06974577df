"""The int8 path's per-row activation quantisation as one small C kernel, built on first use.

Why: on the CPU each eager op is a full pass over a layer's [rows, width] fp32 input at memory
speed, and quantising it took five (absolute values, row maxima, division, rounding, the cast to
bytes): ~150 ms of a 1.0 s engine call on 2 cores (BENCHMARKS.md, 2026-12-04). This kernel reads
each row twice (its maximum, then its bytes) and writes one byte per value. torch.compile fuses
the same ops as well, but its per-call guards cost ~80 us a layer, most of what the fusion saves.

The kernel is C without torch's headers, so it builds in a fraction of a second with the
system's C compiler (`cc`), once per source, flags and CPU, into a cache folder; it runs its rows
on OpenMP threads and links the libgomp torch has already loaded, so both share one thread pool.
Where there is no compiler, or the built kernel disagrees with the eager ops on a probe, the
eager ops run: the values are the same either way (IEEE division, rounding half to even).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* rows [n, width] fp32 -> out [padded, width] u8 = 128 + round(row / scale) (half to even), rows
   past n all 128; scale[r] = max(peak, 1e-12) / 127 with peak the row's largest magnitude, or with
   relu its largest value after max(., 0), which is then applied to the row too. */
void quantize_rows(const float *x, int64_t n, int64_t width, int64_t padded, int relu,
                   uint8_t *out, float *scale) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < padded; r++) {
        uint8_t *o = out + r * width;
        if (r >= n) {
            memset(o, 128, (size_t)width);
            continue;
        }
        const float *row = x + r * width;
        float peak = 0.0f;
        if (relu) {
            for (int64_t j = 0; j < width; j++) peak = row[j] > peak ? row[j] : peak;
        } else {
            for (int64_t j = 0; j < width; j++) {
                float a = fabsf(row[j]);
                peak = a > peak ? a : peak;
            }
        }
        float s = (peak > 1e-12f ? peak : 1e-12f) / 127.0f;
        scale[r] = s;
        if (relu) {
            for (int64_t j = 0; j < width; j++) {
                float v = row[j] > 0.0f ? row[j] : 0.0f;
                o[j] = (uint8_t)(int32_t)(nearbyintf(v / s) + 128.0f);
            }
        } else {
            for (int64_t j = 0; j < width; j++) o[j] = (uint8_t)(int32_t)(nearbyintf(row[j] / s) + 128.0f);
        }
    }
}
"""
# No -ffast-math: the division must be IEEE's and nothing may be contracted or reassociated, so
# the bytes equal the eager ops'. Finite math, no signed zeros and no traps let gcc vectorise the
# row maxima; they change nothing for finite inputs (a zero, signed or not, becomes 128).
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-ffinite-math-only",
          "-fno-signed-zeros", "-fno-trapping-math", "-mprefer-vector-width=512", "-shared", "-fPIC"]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asr-kernels"


def _build() -> Path:
    """The kernel's shared library, compiled unless this source, flags and CPU have one cached."""
    key = hashlib.sha256("\n".join([_SOURCE, *_FLAGS, platform.machine(), _cpu_model()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"quantize-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "quantize.c"
        src.write_text(_SOURCE)
        built = Path(tmp) / "quantize.so"
        subprocess.run([os.environ.get("CC", "cc"), *_FLAGS, str(src), "-o", str(built)],
                       check=True, capture_output=True, timeout=120)
        os.replace(built, target)  # atomic: another process building the same file is harmless
    return target


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line for line in fh if line.startswith(("model name", "flags"))), "")
    except OSError:
        return ""


@functools.cache
def _kernel() -> ctypes._CFuncPtr | None:
    """The loaded kernel, or None (no compiler, a failed build, or a probe that disagreed)."""
    if os.environ.get("ASR_QUANTIZE_KERNEL", "1") == "0":
        return None
    try:
        # libgomp is torch's (loaded with it), so the kernel's threads are torch's OpenMP pool.
        fn = ctypes.CDLL(str(_build())).quantize_rows
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        detail = exc.stderr.decode(errors="replace")[:300] if isinstance(exc, subprocess.CalledProcessError) else exc
        log.info("int8 activations quantised by eager ops (the C kernel is unavailable: %s)", detail)
        return None
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_void_p]
    return fn if _agrees(fn) else None


def _agrees(fn: ctypes._CFuncPtr) -> bool:
    from asr.engine.int8 import quantize_rows_eager

    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(37, 200, generator=gen) * 3
    probe[5] = 0  # an all-zero row: the scale clamped, every byte 128
    probe[7] = torch.arange(200) - 99.5  # values at exact halves of the step
    for relu in (False, True):
        got = _call(fn, probe, 48, relu)
        want = quantize_rows_eager(probe.clone(), 48, relu)
        if not (torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])):
            log.warning("the int8 quantisation kernel disagreed with the eager ops: the eager ops run")
            return False
    return True


def _call(fn: ctypes._CFuncPtr, rows: torch.Tensor, padded: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n, width = rows.shape
    out = torch.empty((padded, width), dtype=torch.uint8)
    scale = torch.empty((n, 1), dtype=torch.float32)
    fn(rows.data_ptr(), n, width, padded, int(relu), out.data_ptr(), scale.data_ptr())
    return out, scale


def quantize_rows(rows: torch.Tensor, padded: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The kernel's (u8 [padded, width], scales [n, 1]) for contiguous fp32 `rows` [n, width], or
    None where it is unavailable (the caller runs the eager ops)."""
    fn = _kernel()
    if fn is None or not rows.is_contiguous() or rows.dtype != torch.float32:
        return None
    return _call(fn, rows, padded, relu)


def available() -> bool:
    """Whether the kernel runs here (builds it on first call)."""
    return _kernel() is not None
