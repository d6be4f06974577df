"""int8 linear layers for the CPU path: weights int8 per output channel, activations int8 per row,
products accumulated exactly in int32 (`torch._int_mm`).

Why not torch's dynamic quantization (`quantize_dynamic`): it scales a layer's whole input with one
number, so what one row gets depends on every other row in the batch (and on the padding): a clip's
text changed with the batch it ran in, which breaks the engine's rule that an item's result equals
that item alone. Here every row (one frame of one clip) has its own scale, and int32 sums are
exact, so a row's output depends on that row only. It is also faster on the CPUs measured (a
3000 x 512 x 2048 product on 2 cores: 5.6 ms, against 14.8 ms for `quantize_dynamic` and 34 ms for
fp32; one int8 term per operand), and torch marks its eager quantization as deprecated.

Each operand is one int8 term by default, or two (`Int8Linear`, `EngineSettings.int8_terms`): one
term keeps fp32's CER but flips near-tie tokens in 11% of the demonstration model's utterances; two
keep 99% of them identical at about 0.6x the speed.

Where the CPU has no fast int8 product (`int8_fast`: no AVX512-VNNI, AVX-VNNI or AMX, where torch's
`_int_mm` is a reference loop about 60x slower than fp32), the same int32 sums are computed exactly
with fp32 products over blocks of K short enough that no partial sum can round: same outputs, at
roughly fp32's speed instead of the loop's.

On AVX-512 CPUs the products run in oneDNN with the weights packed once
(`torch.ops.onednn.qlinear_pointwise`, the kernel behind torch's x86 inductor quantization): there
`_int_mm` takes oneDNN's older s8 x s8 GEMM, while the packed u8 x s8 product uses the CPU's AMX
or VNNI kernels; both give the same exact int32 sums, so the same outputs to the bit. oneDNN keeps
one primitive per input shape, and a service meets a new row count in nearly every batch (one
512 x 2048 layer called with 800 row counts: +370 MB), so the rows are padded up to a ladder of
sizes (`row_rung`: at most 1/8 more rows, about 8 sizes per doubling): the shapes, and the memory
they hold, stay few (the same 800 calls: +18 MB).

On CPUs whose int8 product adds pairs of u8 x s8 products in saturating int16 first (AVX2 or
AVX-512 without VNNI: `vpmaddubsw`; AMD EPYC before Zen 4, Intel before Cascade Lake) the packed
product is still about 1.9x fp32 (a 1000 x 512 x 2048 product on 2 AVX2 cores: 8.3 against 15.6
ms), and exact while 255 x w x 2 fits int16: so one-term weights there take 64 levels a side
instead of 127 (`packed_levels`, found by probing the product, not by reading flags). The
activations keep 127. Two terms need the full range, so they take the exact fp32 blocks there.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import nn

from asr.engine import qkernel

_QMAX = 127.0
_FINE = 2 * _QMAX  # the residual's step: 1/254 of the coarse step
# fp32 holds every integer up to 2^24 exactly, so a dot product of int8 operands whose length K
# keeps K * 127^2 under that is exact in fp32 whatever order the sums take.
_EXACT_K = int(2**24 // (_QMAX * _QMAX))
# Adding 1.5 * 2**23 to a float of magnitude < 2**22 rounds it to an integer, half to even (the
# float's spacing there is exactly 1), and leaves that integer in the low bits of its IEEE bits: so
# for |v| <= 127.5, (v + _U8_MAGIC) viewed as int32 has 128 + round(v) in its low byte. One add
# instead of round_ and another add; the cast to uint8 keeps exactly that byte.
_U8_MAGIC = 12583040.0  # 1.5 * 2**23 + 128
_RUNG_STEPS = 3  # 2**3 rungs per doubling of the row count: at most 1/8 padded rows


def quantize_rows_eager(rows: torch.Tensor, padded: int, relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` [n, width] as oneDNN's u8 activations, 128 + round(row / scale) (half to even), in
    `padded` rows (the rows past n 128: zero activations), and the row scales [n, 1] (the row's
    largest magnitude / 127); `relu`: max(rows, 0) first, in place. `qkernel` computes the same
    bytes in one kernel; these are the eager ops with the fewest passes: rounding by the magic
    number (one add instead of round and add), and with `relu` the row maxima need no absolute
    values."""
    n, width = rows.shape
    peak = rows.relu_().amax(dim=1, keepdim=True) if relu else rows.abs().amax(dim=1, keepdim=True)
    scale = peak.clamp(min=1e-12) / _QMAX
    biased = torch.div(rows, scale).add_(_U8_MAGIC)
    if padded == n:
        return biased.view(torch.int32).to(torch.uint8), scale
    u8 = torch.empty((padded, width), dtype=torch.uint8)
    u8[n:] = 128
    u8[:n] = biased.view(torch.int32)
    return u8, scale


def row_rung(rows: int) -> int:
    """The row count a packed product runs with for `rows` rows: a multiple of 16 up to 64, then
    the next of 8 evenly spaced sizes per doubling (674 -> 704, 495 -> 512). Every padded row
    is a zero activation whose output is dropped."""
    if rows <= 64:
        return max(16, -(-rows // 16) * 16)
    step = 1 << (rows.bit_length() - 1 - _RUNG_STEPS)
    return -(-rows // step) * step


def packed_product_usable() -> bool:
    """Whether the packed u8 x s8 product runs here, and fast (`packed_levels`)."""
    return packed_levels() > 0


@functools.cache
def packed_levels() -> int:
    """The largest weight level a side that the packed u8 x s8 product multiplies exactly here: 127
    where it sums the products in int32 (VNNI, AMX), 64 where it first adds pairs of them in
    saturating int16 (AVX2, AVX-512 without VNNI: 255 x 127 x 2 overflows, 255 x 64 x 2 does not),
    0 where the packed product is not used: no oneDNN op, a CPU without AVX2, int32 -> uint8 casts
    that do not keep the low byte (the magic-number rounding relies on it), or a probe's wrong sum."""
    if not hasattr(torch.ops, "onednn") or not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return 0
    if not torch.backends.mkldnn.is_available() or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return 0
    probe = torch.arange(-300, 300, dtype=torch.int32).repeat(20) + 0x4B400080
    if not torch.equal(probe.to(torch.uint8), (probe & 0xFF).to(torch.uint8)):
        return 0
    # Rows of 255, 0 and 1 (activations +127, -128, -127) against weight columns of +-levels: every
    # pair of products at the edge of int16 where the product saturates.
    u8 = torch.tensor([[255] * 32, [0] * 32, [1] * 32, [255, 0] * 16], dtype=torch.uint8)
    for levels in (127, 64):
        weights = torch.tensor([[levels] * 32, [-levels] * 32, [levels, -levels] * 16], dtype=torch.int8)
        try:
            out = _packed_sums(u8, torch.ops.onednn.qlinear_prepack(weights, None), 3)
        except (AttributeError, RuntimeError, NotImplementedError):
            return 0
        if torch.equal(out, (u8.float() - 128) @ weights.float().t()):
            return levels
    return 0


_UNIT: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _packed_sums(
    u8: torch.Tensor, packed: torch.Tensor, out_features: int, column_scales: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact int32 sums of (u8 - 128) x weights as fp32 [rows, out], each column times its
    `column_scales` entry (one rounding, in the product's own output conversion: no pass of its
    own), or unscaled. No bias: it must come after the rows' scales."""
    if out_features not in _UNIT:
        _UNIT[out_features] = (torch.ones(out_features), torch.zeros(out_features, dtype=torch.int64))
    ones, zeros = _UNIT[out_features]
    return torch.ops.onednn.qlinear_pointwise(
        u8, 1.0, 128, packed, ones if column_scales is None else column_scales, zeros, None, 1.0, 0,
        torch.float32, "none", [], ""
    )


def _int8_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch._int_mm(a, b)` (int8 [M, K] x int8 [K, N] -> int32), bit for bit; through fp32 block
    products where the CPU's int8 product is the slow reference loop."""
    if int8_fast():
        return torch._int_mm(a, b)
    out = None
    for k in range(0, a.shape[1], _EXACT_K):
        part = (a[:, k : k + _EXACT_K].float() @ b[k : k + _EXACT_K].float()).to(torch.int32)
        out = part if out is None else out.add_(part)
    return out


class Int8Linear(nn.Module):
    """A drop-in for `nn.Linear` at inference: y = x W^T + b with int8 weights and activations.

    With `terms=2` each operand is two int8 terms: a coarse one (scale = row max / 127) and its rounding residual
    at 1/254 of that scale, so weights and activations carry about 15 bits instead of 7. Why: the
    demonstration model's decoder chooses between homophones with log-probability margins under
    0.05 in a fifth of its utterances, and one int8 term per operand flipped such a token in 11% of
    them (88.7% of token sequences equal to fp32); two terms keep 98.7% (BENCHMARKS.md, CPU,
    2026-12-02). Three int8 products instead of one: coarse x coarse, and the two cross terms as one
    product over the operands stacked along K; residual x residual (under 1/254^2) is left out.
    `terms=1` (the default path) is one int8 term per operand, one product.
    """

    def __init__(self, linear: nn.Linear, terms: int = 1, levels: int | None = None) -> None:
        """`levels`: the weights' largest level a side, by default the most the packed product
        multiplies exactly here for one term (`packed_levels`), else 127; two terms take 127."""
        super().__init__()
        if terms not in (1, 2):
            raise ValueError("terms is 1 or 2")
        if levels is None:
            levels = packed_levels() if terms == 1 and packed_product_usable() else int(_QMAX)
        if not 1 <= levels <= _QMAX or (terms == 2 and levels != _QMAX):
            raise ValueError(f"levels is 1 to 127 for one term, 127 for two (got {levels})")
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / levels
        units = weight / scale[:, None]
        coarse = torch.round(units).clamp(-levels, levels)
        self.terms, self.levels = terms, levels
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # The int8 weights live either in oneDNN's packed copies (opaque tensors, kept outside the
        # buffers, so state_dict and .to() never see them) or in `_int_mm`'s [in, out] layout.
        self._packed = self._packed_cross = None
        packed = packed_product_usable() and levels <= packed_levels()
        if terms == 2:
            # |units - coarse| <= 0.5, so the residual in 1/254 steps fits int8.
            fine = torch.round((units - coarse) * _FINE).clamp(-_QMAX, _QMAX)
            # [fine | coarse] against the activations' [coarse | fine]: both cross terms in one product.
            cross = torch.cat([fine, coarse], dim=1).to(torch.int8)
            if packed:
                self._packed_cross = torch.ops.onednn.qlinear_prepack(cross, None)
            else:
                cross_t = cross.t().contiguous()
                self.register_buffer("cross_t", cross_t)
                # The lower half is the coarse weight itself (a view: 2 bytes a weight, not 3).
                self.register_buffer("weight_t", cross_t[self.in_features :])
        if packed:
            self._packed = torch.ops.onednn.qlinear_prepack(coarse.to(torch.int8).contiguous(), None)
            self.register_buffer("weight_t", None)
        elif terms == 1:
            self.register_buffer("weight_t", coarse.to(torch.int8).t().contiguous())
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor, relu: bool = False) -> torch.Tensor:
        """`relu`: the layer takes max(x, 0) (a feed-forward block's hidden layer), applied as it
        quantises `x`; in place on `x` where the eager ops run, so `x` must be a fresh tensor that
        nothing else reads."""
        shape = x.shape
        out, scale = self.scaled_sums(x.reshape(-1, shape[-1]).float(), relu)
        return self.finish(out, scale).reshape(*shape[:-1], self.out_features)

    def scaled_sums(self, rows: torch.Tensor, relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact sums times the column scales [n, out] and the rows' scales [n, 1] of fp32
        `rows` [n, in]: `finish` makes them the layer's output."""
        if self._packed is not None and self.terms == 1:
            n = rows.shape[0]
            padded = row_rung(n)
            quantized = qkernel.quantize_rows(rows, padded, relu)
            u8, scale = quantized if quantized is not None else quantize_rows_eager(rows, padded, relu)
            return self.packed_sums(u8, n), scale
        peak = rows.relu_().amax(dim=1, keepdim=True) if relu else rows.abs().amax(dim=1, keepdim=True)
        scale = peak.clamp(min=1e-12) / _QMAX
        # The sums times the column scales (a pass of its own on the `_int_mm` path, so both
        # paths round alike).
        if self._packed is None:
            return self._int_mm_forward(rows, scale), scale
        return self._packed_two_terms(rows, scale), scale

    def packed_sums(self, u8: torch.Tensor, rows: int) -> torch.Tensor:
        """The first `rows` rows of the packed product of quantised activations `u8` [rung, in]:
        the sums come back times the column scales, in the product's own output conversion."""
        return _packed_sums(u8, self._packed, self.out_features, self.weight_scale)[:rows]

    def finish(self, out: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """`scaled_sums`' result times the row scales plus the bias, in place: one fused multiply-add,
        so the [rows, out] result is walked once."""
        if self.bias is not None:
            return torch.addcmul(self.bias, out, scale, out=out)
        return out.mul_(scale)

    def _packed_two_terms(self, rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Two terms through the packed weights on a ladder of row counts: the coarse sums plus the
        cross sums at 1/254, each times the column scales, as on the `_int_mm` path."""
        n, width = rows.shape
        padded = row_rung(n)
        units = torch.div(rows, scale)
        biased = units + _U8_MAGIC
        u8 = torch.empty((padded, 2 * width), dtype=torch.uint8)
        u8[n:] = 128  # padded rows: zero activations
        u8[:n, :width] = biased.view(torch.int32)
        coarse = biased.sub_(_U8_MAGIC)  # round(units), exactly: biased holds an integer
        u8[:n, width:] = units.sub_(coarse).mul_(_FINE).add_(_U8_MAGIC).view(torch.int32)
        out = self.packed_sums(u8[:, :width], n)
        cross = _packed_sums(u8, self._packed_cross, self.out_features, self.weight_scale)[:n]
        return out.add_(cross, alpha=1.0 / _FINE)

    def _int_mm_forward(self, rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The packed paths' values through `torch._int_mm`: the sums times the column scales."""
        units = torch.div(rows, scale)
        coarse = torch.round(units)
        q = coarse.to(torch.int8)
        out = _int8_product(q, self.weight_t).float()
        if self.terms == 2:
            fine = units.sub_(coarse).mul_(_FINE).round_().to(torch.int8)  # in place: |.| <= 127
            # float, not int32: int32 + float with alpha is 6x slower
            cross = _int8_product(torch.cat([q, fine], dim=1), self.cross_t).float()
            return out.mul_(self.weight_scale).add_(cross.mul_(self.weight_scale), alpha=1.0 / _FINE)
        return out.mul_(self.weight_scale)

    def weight_int8(self) -> torch.Tensor:
        """The coarse int8 weights [out, in] (for tests and inspection)."""
        if self._packed is None:
            return self.weight_t.t()
        eye = torch.full((self.in_features, self.in_features), 128, dtype=torch.uint8)
        eye.diagonal().add_(1)
        return _packed_sums(eye, self._packed, self.out_features).t().round().to(torch.int8)

    def extra_repr(self) -> str:
        packed = ", packed" if self._packed is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, terms={self.terms}, levels={self.levels}{packed}")


def int8_runs_fast(terms: int) -> bool:
    """Whether int8 layers of `terms` terms run faster than fp32 here: with a fast `_int_mm`, or one
    term through the packed product (which needs the full range for two)."""
    return int8_fast() or (packed_product_usable() and (terms == 1 or packed_levels() == _QMAX))


def int8_available() -> bool:
    """Whether this torch has the int8 product on the CPU."""
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


# x86 features with which oneDNN multiplies int8 several times faster than fp32 (VNNI, AMX).
_FAST_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def _x86_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 Linux), or None where there are none to read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return None


@functools.cache
def int8_fast() -> bool:
    """Whether torch's int8 product is faster than fp32 on this CPU, decided once per process. With
    AVX512-VNNI, AVX-VNNI or AMX oneDNN multiplies int8 several times faster than fp32; without them
    `torch._int_mm` falls back to a reference loop: on an AVX2-only AMD EPYC (2 cores) a 3000 x 512
    x 2048 product took 3.6 s against 61 ms in fp32, and one 10 s clip 50 s.

    Decided by the CPU's flags where they can be read, not by a stopwatch: timing two small
    products answered True in some processes and False in others on one AMX machine (0.2 against
    0.4 ms, then a slow first call), so the CLI and the server picked different arithmetic for the
    same file. Elsewhere (no /proc/cpuinfo, other architectures) the products are timed."""
    if not int8_available():
        return False
    flags = _x86_flags()
    if flags is not None:
        return bool(flags & _FAST_INT8_FLAGS)
    return _int8_measured_faster()


def _int8_measured_faster() -> bool:
    """Both products timed after a first call each (kernels are made on first use), best of five."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (256, 512), dtype=torch.int8, generator=gen)
    w = torch.randint(-127, 128, (512, 512), dtype=torch.int8, generator=gen)
    af, wf = a.float(), w.float()

    def best(product: object) -> float:
        product()  # type: ignore[operator]
        times = []
        for _ in range(5):
            t = time.perf_counter()
            product()  # type: ignore[operator]
            times.append(time.perf_counter() - t)
        return min(times)

    return best(lambda: torch._int_mm(a, w)) < best(lambda: af @ wf)


def build_row_rungs(module: nn.Module, max_rows: int) -> int:
    """Run every packed layer shape under `module` once at each rung up to `max_rows` rows, so
    oneDNN builds all the primitives its batches can need now, not under traffic: a service's
    resident memory then stays flat after its start (a rung first met under load grew it: +33 MB
    in a 200-client test), and no request waits for a primitive. One call per distinct layer
    shape and rung (oneDNN's cache is keyed by shapes, not by weights): for the full model up to
    1,024 rows, 7 shapes x 36 rungs, 0.45 s and about 80 MB on 2 cores. Returns the calls made."""
    shapes: dict[tuple[int, int, int], Int8Linear] = {}
    for layer in module.modules():
        if isinstance(layer, Int8Linear) and layer._packed is not None:
            shapes.setdefault((layer.in_features, layer.out_features, layer.terms), layer)
    rungs = sorted({row_rung(n) for n in range(1, max_rows + 1)})
    with torch.inference_mode():
        for (width, _, _), layer in shapes.items():
            for rows in rungs:
                layer(torch.zeros(rows, width))
    return len(shapes) * len(rungs)


def feed_forward(w_1: Int8Linear, w_2: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """w_2(relu(w_1(x))), funasr's PositionwiseFeedForward on int8 layers. On the one-term packed
    path the hidden layer is never written as fp32: one kernel (`qkernel.bias_relu_quantize`)
    takes w_1's sums, applies its row scales, bias and the ReLU, and quantises the result for w_2;
    a pass over the 4x-wide hidden activations instead of three. The same values to the bit as
    the layers called in turn (which run where the kernel does not)."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1]).float()
    sums, scale = w_1.scaled_sums(rows)
    n = rows.shape[0]
    fused = None
    if w_2._packed is not None and w_2.terms == 1 and w_1.bias is not None:
        fused = qkernel.bias_relu_quantize(sums, scale, w_1.bias, row_rung(n))
    if fused is None:
        return w_2(w_1.finish(sums, scale).reshape(*shape[:-1], w_1.out_features), relu=True)
    u8, scale = fused
    return w_2.finish(w_2.packed_sums(u8, n), scale).reshape(*shape[:-1], w_2.out_features)


def quantize_linears(module: nn.Module, terms: int = 1) -> int:
    """Replace every `nn.Linear` under `module` by an `Int8Linear`; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear(child, terms))
            count += 1
        else:
            count += quantize_linears(child, terms)
    return count
