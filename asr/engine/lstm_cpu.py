"""The timestamp head's BLSTM on the CPU: the recurrence as a small C kernel (AVX2, FMA, F16C).

Why: the head runs a one-layer BLSTM of 512 units over three times the encoder's frame rate, 1,500
steps for a 30 s clip, each step a product of the 4 MB recurrent weights (per direction) with the
state. oneDNN's LSTM takes ~90 us a direction for such a step of one row on 2 AVX2 cores (the
directions one after the other, each step's small product split over the threads, which then
wait for each other): 16% of an int8 engine call there (BENCHMARKS.md). Worse, that wait is a
spinning barrier every step: where another process shares the cores it collapsed to ~16 ms a
step (100x). Here each direction is one thread's, start to end, with nothing to wait for: the
two run side by side on two cores, or one after the other where torch has one thread. A step
reads a direction's weights from the shared cache (the bound for one row), so the int8 path keeps
them in fp16, 2 MB, packed as one sequential stream per pair of units; the four gates of two units
are one vector of eight lanes, the products of a step taken before its cells, whose chains of
dependent operations (the sigmoids) then overlap each other.

Each row's arithmetic is fixed by the code alone (the order of every sum, the per-row input
products over windows that depend only on the row's own length), so a clip gets the same values
in any batch: the batch runs as one, where oneDNN had to run small batches a row at a time to
keep that property. (torch's input product may round short inputs otherwise with another thread
count; a process keeps its count.) With fp32 weights the values equal torch's LSTM to float
rounding (sums in another order; the sigmoid and tanh from one polynomial exponential, ~2 ulp).

The input products, windows of `WINDOW` steps at once, are torch's `addmm`, or on the int8 path
the encoder's int8 layers. Where the kernel cannot be built (no C compiler, no AVX2, FMA and F16C)
or disagrees with torch's LSTM on a probe, `blstm` returns None and torch's LSTM runs.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import subprocess
from collections.abc import Callable

import torch

from asr.engine.int8 import Int8Linear, packed_product_usable
from asr.engine.qkernel import build_library

log = logging.getLogger(__name__)

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "the BLSTM kernel needs AVX2, FMA and F16C"
#endif

/* e^x, Cephes' expf: x = n ln2 + r, a polynomial in r, 2^n put in the exponent bits. */
static inline __m256 vexp(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline __m256 vsigmoid(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, vexp(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* The 8 sums of v[0..7] as one vector (lane r: the sum of v[r]), in a fixed order. */
static inline __m256 hsum8(const __m256 *v) {
    __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

/* Units 2p and 2p+1 from their gates' pre-activations (lane q*2+u: gate q of unit 2p+u; g's lanes
   take tanh(x) = 2 sigmoid(2x) - 1): the cell cv and the new h written to hn and o. */
static inline void cell(__m256 pre, float *cv, float *hn, float *o) {
    const __m256 scale = _mm256_setr_ps(1, 1, 1, 1, 2, 2, 1, 1);
    const __m256 shift = _mm256_setr_ps(0, 0, 0, 0, 1, 1, 0, 0);
    float g[8] __attribute__((aligned(32)));
    _mm256_store_ps(g, _mm256_fmsub_ps(vsigmoid(_mm256_mul_ps(pre, scale)), scale, shift));
    float cn[8] __attribute__((aligned(32))) = {0};
    for (int u = 0; u < 2; u++)
        cn[u] = g[2 + u] * cv[u] + g[u] * g[4 + u];
    const __m256 two = _mm256_set1_ps(2.0f);
    float tc[8] __attribute__((aligned(32)));
    _mm256_store_ps(tc, _mm256_fmsub_ps(vsigmoid(_mm256_mul_ps(_mm256_load_ps(cn), two)), two, _mm256_set1_ps(1.0f)));
    for (int u = 0; u < 2; u++) {
        cv[u] = cn[u];
        o[u] = hn[u] = g[6 + u] * tc[u];
    }
}

/* Steps [s0, s1) of a one-layer BLSTM with H units (H a multiple of 8), torch's gate order i, f, g, o.
   Row b has lens[b] steps; the forward direction's step s is its time s, the backward's is time
   lens[b] - 1 - s. xf / xb [B, W, 4H]: the input products plus both biases of step s at
   [b, s - s0] (the backward's in its own step order), columns in the order [H/2 (unit pair p), 8
   (gate q, unit u: q*2+u)]. wf / wb: the recurrent weights [4H, H] packed as [H/2 (p), H/8 (8
   inputs), 8 (q*2+u), 8]: a unit pair's products read one sequential stream. fp32 (blstm_steps) or
   fp16 (blstm_steps_f16: half the bytes a step reads).
   h [2 (step parity), 2 (direction), B, H] and c [2, B, H]: the state, zero before step 0.
   out [B, T, 2H]: each step's h, the forward's in [:H], the backward's in [H:].
   One thread a direction (both on one thread where torch has one): the directions never wait for
   each other, so a step has no synchronisation, and a busy core (other processes, an
   oversubscribed machine) delays one direction instead of stalling every step of both. A step
   first takes the products of every unit pair, then the cells: the cells' long chains of
   dependent operations (the sigmoids) overlap each other instead of stalling the products. */
#define LOAD_F32(p) _mm256_loadu_ps(p)
#define LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
#define BLSTM_STEPS(NAME, WT, LOAD)                                                                        \
void NAME(const float *xf, const float *xb, const WT *wf, const WT *wb, const int64_t *lens,               \
          int64_t B, int64_t T, int64_t H, int64_t W, int64_t s0, int64_t s1, float *h, float *c, float *out) { \
    const int64_t pairs = H / 2, G = 4 * H;                                                                 \
    const int threads = omp_get_max_threads() > 1 ? 2 : 1;                                                  \
    _Pragma("omp parallel num_threads(threads)")                                                            \
    {                                                                                                       \
        __m256 *pre = aligned_alloc(32, sizeof(__m256) * (size_t)(pairs * B));                              \
        for (int d = omp_get_thread_num(); d < 2; d += omp_get_num_threads()) {                              \
            const WT *wd = d ? wb : wf;                                                                     \
            const float *xd = d ? xb : xf;                                                                  \
            for (int64_t s = s0; s < s1; s++) {                                                             \
                const float *hp = h + ((s & 1) * 2 + d) * B * H;                                            \
                float *hn = h + (((s + 1) & 1) * 2 + d) * B * H;                                            \
                for (int64_t p = 0; p < pairs; p++) {                                                       \
                    const WT *w = wd + p * 8 * H;                                                           \
                    for (int64_t b = 0; b < B; b++) {                                                       \
                        if (s >= lens[b])                                                                   \
                            continue;                                                                       \
                        const float *hv = hp + b * H;                                                       \
                        __m256 acc[8];                                                                      \
                        for (int r = 0; r < 8; r++)                                                         \
                            acc[r] = _mm256_setzero_ps();                                                   \
                        for (int64_t k = 0; k < H; k += 8) {                                                \
                            const __m256 v = _mm256_loadu_ps(hv + k);                                       \
                            for (int r = 0; r < 8; r++)                                                     \
                                acc[r] = _mm256_fmadd_ps(LOAD(w + k * 8 + r * 8), v, acc[r]);               \
                        }                                                                                   \
                        const float *xs = xd + (b * W + (s - s0)) * G + p * 8;                              \
                        pre[p * B + b] = _mm256_add_ps(_mm256_loadu_ps(xs), hsum8(acc));                    \
                    }                                                                                       \
                }                                                                                           \
                for (int64_t p = 0; p < pairs; p++) {                                                       \
                    for (int64_t b = 0; b < B; b++) {                                                       \
                        if (s >= lens[b])                                                                   \
                            continue;                                                                       \
                        const int64_t t = d ? lens[b] - 1 - s : s;                                          \
                        cell(pre[p * B + b], c + (d * B + b) * H + 2 * p, hn + b * H + 2 * p,               \
                             out + (b * T + t) * 2 * H + d * H + 2 * p);                                    \
                    }                                                                                       \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
        free(pre);                                                                                          \
    }                                                                                                       \
}

BLSTM_STEPS(blstm_steps, float, LOAD_F32)
BLSTM_STEPS(blstm_steps_f16, uint16_t, LOAD_F16)
"""
# -ffp-contract=off: the cell update rounds as written, the same in every build on a CPU.
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]

WINDOW = 128
"""Steps whose input products are computed at once: bounds their memory (B x 128 x 4H per
direction, 4 MB a row at 512 units) whatever the clip's length."""


@functools.cache
def _kernel() -> ctypes.CDLL | None:
    """The built library (`blstm_steps`, `blstm_steps_f16`), or None (no compiler, a failed build,
    or a probe that disagreed with torch's LSTM)."""
    if os.environ.get("ASR_LSTM_CPU_KERNEL", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build_library("blstm", _SOURCE, _FLAGS)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace")[:300] if isinstance(exc, subprocess.CalledProcessError) else exc
        log.info("the timestamp BLSTM runs torch's LSTM on the CPU (the C kernel is unavailable: %s)", detail)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    for fn in (lib.blstm_steps, lib.blstm_steps_f16):
        fn.restype = None
        fn.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, ptr, ptr, ptr]
    return lib if all(_agrees(lib, half) for half in (False, True)) else None


def _agrees(lib: ctypes.CDLL, half: bool) -> bool:
    """The kernel against torch's LSTM on a random BLSTM with rows of different lengths."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(24, 16, batch_first=True, bidirectional=True).requires_grad_(False)
    x = torch.randn(3, 2 * WINDOW + 5, 24, generator=gen)
    lens = torch.tensor([2 * WINDOW + 5, 70, 1])
    got = _run(lib, lstm, x, lens, half)
    # fp16 recurrent weights: each product's terms within 2^-11 of fp32's.
    tolerance = 2e-3 if half else 1e-5
    for b, n in enumerate(lens.tolist()):
        ref = lstm(x[b : b + 1, :n])[0][0]
        if not torch.allclose(got[b, :n], ref, atol=tolerance, rtol=0):
            log.warning("the BLSTM kernel (%s) disagreed with torch's LSTM: torch's runs", "fp16" if half else "fp32")
            return False
    return True


def fits(blstm: torch.nn.LSTM) -> bool:
    """Whether the kernel takes this BLSTM, fp32 on the CPU (the kernel itself may still be unavailable)."""
    return (
        blstm.weight_hh_l0.device.type == "cpu"
        and blstm.weight_hh_l0.dtype == torch.float32
        and blstm.bidirectional
        and blstm.num_layers == 1
        and blstm.batch_first
        and blstm.bias
        and blstm.proj_size == 0
        and blstm.hidden_size % 8 == 0
    )


Projection = Callable[[torch.Tensor, torch.Tensor], object]
"""Writes a window's input products plus biases (columns in the kernel's order) for rows [m, I] into out [m, 4H]."""


def _weights(blstm: torch.nn.LSTM, half: bool, int8_inputs: bool) -> tuple[tuple[Projection, torch.Tensor], ...]:
    """(the input projection, the packed recurrent weights) per direction (cached)."""
    key = f"_asr_cpu_kernel_{int(half)}{int(int8_inputs)}"
    cached = blstm.__dict__.get(key)
    if cached is not None and cached[1] == blstm.weight_ih_l0.data_ptr():
        return cached[0]
    hidden = blstm.hidden_size
    # Gate q of unit 2p+u (torch's row q*H + 2p + u) goes to column p*8 + q*2 + u of the input products.
    order = torch.arange(4 * hidden).reshape(4, hidden // 2, 2).permute(1, 0, 2).reshape(-1)
    parts = []
    for sfx in ("", "_reverse"):
        weight = getattr(blstm, f"weight_ih_l0{sfx}")[order]
        bias = (getattr(blstm, f"bias_ih_l0{sfx}") + getattr(blstm, f"bias_hh_l0{sfx}"))[order]
        parts.append((_projection(weight, bias, int8_inputs), _packed(getattr(blstm, f"weight_hh_l0{sfx}"), half)))
    blstm.__dict__[key] = (tuple(parts), blstm.weight_ih_l0.data_ptr())  # outside _modules: not in the state dict
    return blstm.__dict__[key][0]


def _projection(weight: torch.Tensor, bias: torch.Tensor, int8: bool) -> Projection:
    if not int8:
        weight_t = weight.t()
        return lambda rows, out: torch.addmm(bias, rows, weight_t, out=out)
    # skip_init: no random initialisation, so building it leaves torch's random state as it was.
    linear = torch.nn.utils.skip_init(torch.nn.Linear, weight.size(1), weight.size(0))
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    layer = Int8Linear(linear)
    return lambda rows, out: out.copy_(layer(rows))


def _packed(weight: torch.Tensor, half: bool) -> torch.Tensor:
    """[4H, H] recurrent weights in the kernel's order: [H/2, H/8, 8 (gate q, unit u), 8 inputs],
    fp16 where `half`."""
    hidden = weight.size(1)
    rows = weight.reshape(4, hidden // 2, 2, hidden // 8, 8)  # gate q, unit pair p, unit u, input block, lane
    return rows.permute(1, 3, 0, 2, 4).to(torch.float16 if half else torch.float32).contiguous()


def _run(lib: ctypes.CDLL, blstm: torch.nn.LSTM, x: torch.Tensor, lens: torch.Tensor, half: bool,
         int8_inputs: bool = False) -> torch.Tensor:
    rows, steps, _ = x.shape
    hidden = blstm.hidden_size
    lengths = [min(max(int(n), 0), steps) for n in lens.tolist()]
    # The C code trusts these sizes: a wrong one would read or write past a buffer.
    if len(lengths) != rows or x.size(2) != blstm.input_size:
        raise ValueError(f"blstm: input {tuple(x.shape)}, {len(lengths)} lengths, {blstm.input_size} inputs")
    x = x.contiguous()
    (project_f, hh_f), (project_b, hh_b) = _weights(blstm, half, int8_inputs)
    fn = lib.blstm_steps_f16 if half else lib.blstm_steps
    out = x.new_zeros(rows, steps, 2 * hidden)
    h = x.new_zeros(2, 2, rows, hidden)
    c = x.new_zeros(2, rows, hidden)
    xf = x.new_empty(rows, WINDOW, 4 * hidden)
    xb = x.new_empty(rows, WINDOW, 4 * hidden)
    lens64 = torch.tensor(lengths, dtype=torch.int64)
    for s0 in range(0, max(lengths, default=0), WINDOW):
        for b, n in enumerate(lengths):
            m = min(s0 + WINDOW, n) - s0
            if m <= 0:
                continue
            # Per row, over windows set by the row's own length: its values do not depend on the batch.
            project_f(x[b, s0 : s0 + m], xf[b, :m])
            project_b(x[b, n - s0 - m : n - s0].flip(0), xb[b, :m])
        s1 = min(s0 + WINDOW, max(lengths))
        fn(xf.data_ptr(), xb.data_ptr(), hh_f.data_ptr(), hh_b.data_ptr(), lens64.data_ptr(), rows, steps, hidden,
           WINDOW, s0, s1, h.data_ptr(), c.data_ptr(), out.data_ptr())
    return out


def blstm(
    blstm: torch.nn.LSTM, x: torch.Tensor, lens: torch.Tensor, half: bool = False, int8_inputs: bool = False
) -> torch.Tensor | None:
    """A one-layer bidirectional LSTM whose backward direction starts at each row's own end (x [B, T,
    I] fp32 on the CPU, lens [B]): [B, T, 2H], zeros past each row's end. None where the kernel does
    not run here or does not take this LSTM (the caller runs torch's).

    The int8 path's choices: `half`, the recurrent weights in fp16 (half the bytes each step
    reads); `int8_inputs`, the input products as the encoder's int8 layers (`Int8Linear`, one
    term; 2.5x fp32's product on AVX2), where the packed int8 product runs here."""
    if not fits(blstm) or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    lib = _kernel()
    if lib is None:
        return None
    return _run(lib, blstm, x, lens, half, int8_inputs and packed_product_usable())


def available() -> bool:
    """Whether the kernel runs here (builds it on the first call)."""
    return _kernel() is not None
