"""int8 linear layers for the CPU path: weights int8 per output channel, activations int8 per row,
products accumulated exactly in int32.

Why not torch's dynamic quantization (`quantize_dynamic`): it scales a layer's whole input with one
number, so what one row gets depends on every other row in the batch (and on the padding): a clip's
text changed with the batch it ran in, which breaks the engine's rule that an item's result equals
that item alone. Here every row (one frame of one clip) has its own scale, and int32 sums are
exact, so a row's output depends on that row only. It is also faster on the CPUs measured (a
3000 x 512 x 2048 product on 2 cores: 5.6 ms, against 14.8 ms for `quantize_dynamic` and 34 ms for
fp32), and torch marks its eager quantization as deprecated.

The product runs in oneDNN with the weights packed once (`torch.ops.onednn.qlinear_pointwise`,
the kernel behind torch's x86 inductor quantization) where this torch has it and the CPU runs
AVX-512; elsewhere as `torch._int_mm`. Both give the same exact int32 sums, so the same outputs to
the bit. oneDNN takes the activations as uint8 with zero point 128 (its native u8 x s8 product;
int8 activations run a reference kernel there, thousands of times slower), and hands the sums back
as fp32 directly, which saves `_int_mm`'s separate int32 -> fp32 pass over the output.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

_QMAX = 127.0
# Adding 1.5 * 2**23 to a float of magnitude < 2**22 rounds it to an integer, half to even (the
# float's spacing there is exactly 1), and leaves that integer in the low bits of its IEEE bits: so
# for |v| <= 127.5, (v + _U8_MAGIC) viewed as int32 has 128 + round(v) in its low byte. One add
# instead of round_ and another add, and the cast to uint8 keeps exactly that byte.
_U8_MAGIC = 12583040.0  # 1.5 * 2**23 + 128


@functools.cache
def _packed_product_usable() -> bool:
    """Whether the oneDNN packed u8 x s8 product can run here, and fast: its op exists, the CPU
    runs AVX-512 (elsewhere `_int_mm` is the measured path), and int32 -> uint8 casts keep the low
    byte (the magic-number rounding above relies on it; a saturating cast would not)."""
    if not hasattr(torch.ops, "onednn") or not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return False
    if not torch.backends.mkldnn.is_available() or "AVX512" not in torch.backends.cpu.get_cpu_capability():
        return False
    probe = torch.arange(-300, 300, dtype=torch.int32).repeat(20) + 0x4B400080
    if not torch.equal(probe.to(torch.uint8), (probe & 0xFF).to(torch.uint8)):
        return False
    try:
        w = torch.ones(8, 16, dtype=torch.int8)
        out = _qlinear(torch.full((2, 16), 130, dtype=torch.uint8), torch.ops.onednn.qlinear_prepack(w, None), 8)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return torch.equal(out, torch.full((2, 8), 32.0))


_ONES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _qlinear(u8: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """The exact int32 sums of (u8 - 128) x weights as fp32 [rows, out]: unit scales, no bias, so
    oneDNN converts the sums and nothing else (the scales are applied after, in the same order as
    the `_int_mm` path)."""
    if out_features not in _ONES:
        _ONES[out_features] = (torch.ones(out_features), torch.zeros(out_features, dtype=torch.int64))
    ones, zeros = _ONES[out_features]
    return torch.ops.onednn.qlinear_pointwise(
        u8, 1.0, 128, packed, ones, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )


class Int8Linear(nn.Module):
    """A drop-in for `nn.Linear` at inference: y = x W^T + b with int8 weights and activations.

    `forward(x, nonnegative=True)`: the caller guarantees x >= 0 (a ReLU's output), so a row's
    largest magnitude is its largest value and the pass that takes absolute values is skipped."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / _QMAX
        q = torch.round(weight / scale[:, None]).clamp(-_QMAX, _QMAX).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # [in, out]: _int_mm's layout. With the packed product the int8 weights live only in
        # oneDNN's packed copy (an opaque tensor: kept outside the buffers, so state_dict and
        # .to() never see it), and weight_t is None.
        self._packed = torch.ops.onednn.qlinear_prepack(q, None) if _packed_product_usable() else None
        self.register_buffer("weight_t", None if self._packed is not None else q.t().contiguous())
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor, nonnegative: bool = False) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        peak = rows.amax(dim=1, keepdim=True) if nonnegative else rows.abs().amax(dim=1, keepdim=True)
        scale = peak.clamp(min=1e-12) / _QMAX
        if self._packed is not None:
            biased = torch.div(rows, scale).add_(_U8_MAGIC)
            u8 = biased.view(torch.int32).to(torch.uint8)
            out = _qlinear(u8, self._packed, self.out_features)
            out.mul_(scale)
        else:
            q = torch.div(rows, scale).round_()  # in place: one [rows, in] buffer fewer
            out = torch._int_mm(q.to(torch.int8), self.weight_t) * scale
        # One fused multiply-add for the column scales and the bias (separate passes over the
        # [rows, out] result cost more than the int8 product).
        if self.bias is not None:
            out = torch.addcmul(self.bias, out, self.weight_scale, out=out)
        else:
            out.mul_(self.weight_scale)
        return out.reshape(*shape[:-1], self.out_features)

    def weight_int8(self) -> torch.Tensor:
        """The int8 weights [out, in] (for tests and inspection)."""
        if self._packed is None:
            return self.weight_t.t()
        eye = torch.full((self.in_features, self.in_features), 128, dtype=torch.uint8)
        eye.diagonal().add_(1)
        return _qlinear(eye, self._packed, self.out_features).t().round().to(torch.int8)

    def extra_repr(self) -> str:
        packed = ", packed" if self._packed is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{packed}"


def int8_available() -> bool:
    """Whether this torch has the int8 product on the CPU."""
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def quantize_linears(module: nn.Module) -> int:
    """Replace every `nn.Linear` under `module` by an `Int8Linear`; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear(child))
            count += 1
        else:
            count += quantize_linears(child)
    return count
