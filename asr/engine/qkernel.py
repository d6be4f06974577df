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

/* A feed-forward block's middle: v = bias[j] + sums[r, j] * row_scale[r] (one fused multiply-add,
   as torch's addcmul computes it on CPUs with FMA; the probe checks), then max(v, 0), quantised
   as quantize_rows does, without writing v. */
void bias_relu_quantize(const float *sums, const float *row_scale, const float *bias, int64_t n,
                        int64_t width, int64_t padded, uint8_t *out, float *scale) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < padded; r++) {
        uint8_t *o = out + r * width;
        if (r >= n) {
            memset(o, 128, (size_t)width);
            continue;
        }
        const float *row = sums + r * width;
        const float rs = row_scale[r];
        float peak = 0.0f;
        for (int64_t j = 0; j < width; j++) {
            float v = fmaf(row[j], rs, bias[j]);
            peak = v > peak ? v : peak;
        }
        float s = (peak > 1e-12f ? peak : 1e-12f) / 127.0f;
        scale[r] = s;
        for (int64_t j = 0; j < width; j++) {
            float v = fmaf(row[j], rs, bias[j]);
            v = v > 0.0f ? v : 0.0f;
            o[j] = (uint8_t)(int32_t)(nearbyintf(v / s) + 128.0f);
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
def _library() -> ctypes.CDLL | None:
    if os.environ.get("ASR_QUANTIZE_KERNEL", "1") == "0":
        return None
    try:
        # libgomp is torch's (loaded with it), so the kernels' threads are torch's OpenMP pool.
        lib = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace")[:300] if isinstance(exc, subprocess.CalledProcessError) else exc
        log.info("int8 activations quantised by eager ops (the C kernels are unavailable: %s)", detail)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.quantize_rows.restype = lib.bias_relu_quantize.restype = None
    lib.quantize_rows.argtypes = [ptr, i64, i64, i64, ctypes.c_int, ptr, ptr]
    lib.bias_relu_quantize.argtypes = [ptr, ptr, ptr, i64, i64, i64, ptr, ptr]
    return lib


@functools.cache
def _kernel() -> ctypes._CFuncPtr | None:
    """`quantize_rows`, or None (no compiler, a failed build, or a probe that disagreed)."""
    lib = _library()
    return lib.quantize_rows if lib is not None and _agrees(lib.quantize_rows) else None


@functools.cache
def _ffn_kernel() -> ctypes._CFuncPtr | None:
    """`bias_relu_quantize`, or None: also where this CPU's torch rounds addcmul otherwise."""
    lib = _library()
    return lib.bias_relu_quantize if _kernel() is not None and _ffn_agrees(lib.bias_relu_quantize) else None


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


def _ffn_agrees(fn: ctypes._CFuncPtr) -> bool:
    from asr.engine.int8 import quantize_rows_eager

    gen = torch.Generator().manual_seed(1)
    sums, bias = torch.randn(37, 300, generator=gen) * 50, torch.randn(300, generator=gen)
    row_scale = torch.rand(37, 1, generator=gen)
    row_scale[4] = 0  # a row of bias alone
    _tie_row(sums, row_scale, bias, 9)
    got = _call_ffn(fn, sums, row_scale, bias, 48)
    want = quantize_rows_eager(torch.addcmul(bias, sums, row_scale), 48, True)
    if torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]):
        return True
    log.info("torch's addcmul rounds otherwise than one fused multiply-add here: the feed-forward kernel is off")
    return False


def _tie_row(sums: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor, r: int) -> None:
    """Row `r` made to tell one fused multiply-add from a product and a sum: its peak is exactly 127
    (scale 1), and its second value is 0.5 + 2^-24 with one rounding but 0.5 with two (the product
    (1 + 2^-12)^2 loses its 2^-24 when rounded): 129 against 128. Random rows almost never tell,
    as one ulp rarely moves a rounded byte. Columns 0 and 1 of the bias are set for it."""
    sums[r] = 0
    row_scale[r] = 1 + 2**-12
    sums[r, 0], bias[0] = 64, 127 - 64 - 2**-6  # 64 * (1 + 2^-12) is exact: 127 either way
    sums[r, 1], bias[1] = 1 + 2**-12, -(0.5 + 2**-11)


def _call(fn: ctypes._CFuncPtr, rows: torch.Tensor, padded: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n, width = rows.shape
    out = torch.empty((padded, width), dtype=torch.uint8)
    scale = torch.empty((n, 1), dtype=torch.float32)
    fn(rows.data_ptr(), n, width, padded, int(relu), out.data_ptr(), scale.data_ptr())
    return out, scale


def _call_ffn(fn: ctypes._CFuncPtr, sums: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor,
              padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, width = sums.shape
    out = torch.empty((padded, width), dtype=torch.uint8)
    scale = torch.empty((n, 1), dtype=torch.float32)
    fn(sums.data_ptr(), row_scale.data_ptr(), bias.data_ptr(), n, width, padded, out.data_ptr(), scale.data_ptr())
    return out, scale


def quantize_rows(rows: torch.Tensor, padded: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The kernel's (u8 [padded, width], scales [n, 1]) for contiguous fp32 `rows` [n, width], or
    None where it is unavailable (the caller runs the eager ops)."""
    fn = _kernel()
    if fn is None or not rows.is_contiguous() or rows.dtype != torch.float32:
        return None
    return _call(fn, rows, padded, relu)


def bias_relu_quantize(sums: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor,
                       padded: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`quantize_rows(relu(addcmul(bias, sums, row_scale)), padded, True)` without the fp32 hidden
    rows, or None where that kernel is unavailable. sums [n, width], row_scale [n, 1], bias
    [width]: contiguous fp32."""
    fn = _ffn_kernel()
    if fn is None or not all(t.is_contiguous() and t.dtype == torch.float32 for t in (sums, row_scale, bias)):
        return None
    return _call_ffn(fn, sums, row_scale, bias, padded)


def available() -> bool:
    """Whether the kernel runs here (builds it on first call)."""
    return _kernel() is not None
