"""The int8 path's per-row activation quantisation as small C kernels, built on first use:
`quantize_rows` for a layer's input, `bias_relu_quantize` for a feed-forward block's middle (the
first layer's row scales and bias, the ReLU and the second layer's quantisation, with no fp32
hidden rows written: one pass over the 4x-wide hidden activations instead of three).

Why: on the CPU each eager op is a full pass over a layer's [rows, width] fp32 input at memory
speed, and quantising it took five (absolute values, row maxima, division, rounding, the cast to
bytes): ~150 ms of a 1.0 s engine call on 2 cores (BENCHMARKS.md, 2026-12-04). The kernels read
each row twice (its maximum, then its bytes) and write one byte per value. torch.compile fuses
the same ops as well, but its per-call guards cost ~80 us a layer, most of what the fusion saves.

The kernels are C without torch's headers, so they build in a fraction of a second with the
system's C compiler (`cc`), once per source, flags and CPU, into a cache folder; they run their
rows on OpenMP threads and link the libgomp torch has already loaded, so both share one thread
pool. Where there is no compiler, or a built kernel disagrees with torch's ops on a probe, torch's
ops run: the values are the same either way (IEEE division, rounding half to even, one fused
multiply-add where torch's addcmul uses one).
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

/* x [n, width] fp32 -> out [padded, width] u8 = 128 + round(v / scale) (half to even), rows past
   n all 128, with v = x, or with bias v = bias[j] + x[r, j] * row_scale[r] as one fused
   multiply-add (torch's addcmul on CPUs with FMA; the probe checks). scale[r] = max(peak, 1e-12)
   / 127 with peak the row's largest |v|, or with relu its largest max(v, 0), which then applies
   to v too. gcc unswitches the loops on bias and relu, so each variant is vectorised alone. */
void quantize_rows(const float *x, const float *row_scale, const float *bias, int64_t n, int64_t width,
                   int64_t padded, int relu, uint8_t *out, float *scale) {
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < padded; r++) {
        uint8_t *o = out + r * width;
        if (r >= n) {
            memset(o, 128, (size_t)width);
            continue;
        }
        const float *row = x + r * width;
        const float rs = bias ? row_scale[r] : 1.0f;
        float peak = 0.0f;
        for (int64_t j = 0; j < width; j++) {
            float v = bias ? fmaf(row[j], rs, bias[j]) : row[j];
            float m = relu ? v : fabsf(v);
            peak = m > peak ? m : peak;
        }
        float s = (peak > 1e-12f ? peak : 1e-12f) / 127.0f;
        scale[r] = s;
        for (int64_t j = 0; j < width; j++) {
            float v = bias ? fmaf(row[j], rs, bias[j]) : row[j];
            v = relu && v < 0.0f ? 0.0f : v;
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


def build_library(name: str, source: str, flags: list[str]) -> Path:
    """A C source's shared library, compiled unless this source, flags and CPU have one cached.
    Raises OSError or subprocess.SubprocessError where it cannot be built."""
    key = hashlib.sha256("\n".join([source, *flags, platform.machine(), _cpu_model()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        built = Path(tmp) / f"{name}.so"
        subprocess.run([os.environ.get("CC", "cc"), *flags, str(src), "-o", str(built)],
                       check=True, capture_output=True, timeout=120)
        os.replace(built, target)  # atomic: another process building the same file is harmless
    return target


def _build() -> Path:
    return build_library("quantize", _SOURCE, _FLAGS)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next((line for line in fh if line.startswith(("model name", "flags"))), "")
    except OSError:
        return ""


@functools.cache
def _kernel() -> ctypes._CFuncPtr | None:
    """The built `quantize_rows`, or None (no compiler, a failed build, or a probe that disagreed
    with torch's ops without a bias)."""
    if os.environ.get("ASR_QUANTIZE_KERNEL", "1") == "0":
        return None
    try:
        # libgomp is torch's (loaded with it), so the kernel's threads are torch's OpenMP pool.
        fn = ctypes.CDLL(str(_build())).quantize_rows
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace")[:300] if isinstance(exc, subprocess.CalledProcessError) else exc
        log.info("int8 activations quantised by torch's ops (the C kernel is unavailable: %s)", detail)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.restype = None
    fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, ctypes.c_int, ptr, ptr]
    return fn if _agrees(fn) else None


@functools.cache
def _with_bias() -> bool:
    """Whether the kernel's bias variant agrees with torch's addcmul here (it is one fused
    multiply-add where the CPU has FMA)."""
    fn = _kernel()
    if fn is None:
        return False
    gen = torch.Generator().manual_seed(1)
    sums, bias = torch.randn(37, 300, generator=gen) * 50, torch.randn(300, generator=gen)
    row_scale = torch.rand(37, 1, generator=gen)
    row_scale[4] = 0  # a row of bias alone
    _tie_row(sums, row_scale, bias, 9)
    if _same(_run(fn, sums, 48, True, row_scale, bias), _torch_ops(torch.addcmul(bias, sums, row_scale), 48, True)):
        return True
    log.info("torch's addcmul rounds otherwise than one fused multiply-add here: the feed-forward kernel is off")
    return False


def _agrees(fn: ctypes._CFuncPtr) -> bool:
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(37, 200, generator=gen) * 3
    probe[5] = 0  # an all-zero row: the scale clamped, every byte 128
    probe[7] = torch.arange(200) - 99.5  # values at exact halves of the step
    if all(_same(_run(fn, probe, 48, relu), _torch_ops(probe.clone(), 48, relu)) for relu in (False, True)):
        return True
    log.warning("the int8 quantisation kernel disagreed with torch's ops: those run")
    return False


def _torch_ops(rows: torch.Tensor, padded: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from asr.engine.int8 import quantize_rows_eager

    return quantize_rows_eager(rows, padded, relu)


def _same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _tie_row(sums: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor, r: int) -> None:
    """Row `r` made to tell one fused multiply-add from a product and a sum: its peak is exactly 127
    (scale 1), and its second value is 0.5 + 2^-24 with one rounding but 0.5 with two (the product
    (1 + 2^-12)^2 loses its 2^-24 when rounded): 129 against 128. Random rows almost never tell,
    as one ulp rarely moves a rounded byte. Columns 0 and 1 of the bias are set for it."""
    sums[r] = 0
    row_scale[r] = 1 + 2**-12
    sums[r, 0], bias[0] = 64, 127 - 64 - 2**-6  # 64 * (1 + 2^-12) is exact: 127 either way
    sums[r, 1], bias[1] = 1 + 2**-12, -(0.5 + 2**-11)


def _run(fn: ctypes._CFuncPtr, x: torch.Tensor, padded: int, relu: bool, row_scale: torch.Tensor | None = None,
         bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n, width = x.shape
    # The C code trusts these sizes: a wrong one would read or write past a buffer.
    scales = None if row_scale is None else row_scale.numel()
    biases = None if bias is None else bias.numel()
    if padded < n or scales not in (None, n) or biases not in (None, width):
        raise ValueError(f"quantize: {n} rows of {width} into {padded} rows, {scales} row scales, {biases} biases")
    out = torch.empty((padded, width), dtype=torch.uint8)
    scale = torch.empty((n, 1), dtype=torch.float32)
    fn(x.data_ptr(), None if row_scale is None else row_scale.data_ptr(), None if bias is None else bias.data_ptr(),
       n, width, padded, int(relu), out.data_ptr(), scale.data_ptr())
    return out, scale


def _fits(*tensors: torch.Tensor) -> bool:
    return all(t.is_contiguous() and t.dtype == torch.float32 for t in tensors)


def quantize_rows(rows: torch.Tensor, padded: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The kernel's (u8 [padded, width], scales [n, 1]) for contiguous fp32 `rows` [n, width], or
    None where it is unavailable (the caller runs torch's ops)."""
    fn = _kernel()
    if fn is None or not _fits(rows):
        return None
    return _run(fn, rows, padded, relu)


def bias_relu_quantize(sums: torch.Tensor, row_scale: torch.Tensor, bias: torch.Tensor,
                       padded: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`quantize_rows(relu(addcmul(bias, sums, row_scale)), padded, True)` without the fp32 hidden
    rows, or None where that is unavailable. sums [n, width], row_scale [n, 1], bias [width]:
    contiguous fp32."""
    fn = _kernel()
    if fn is None or not _with_bias() or not _fits(sums, row_scale, bias):
        return None
    return _run(fn, sums, padded, True, row_scale, bias)


def available() -> bool:
    """Whether `quantize_rows`' kernel runs here (builds the kernels on the first call)."""
    return _kernel() is not None
