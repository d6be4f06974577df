"""The SANM encoder's FSMN memory block as one Triton kernel (CUDA).

funasr computes the memory of each encoder layer as mask-multiply, transpose, pad, depthwise
Conv1d, transpose back, residual add and mask-multiply again: six kernels, most of them strided
or broadcasting (so not vectorised), about a fifth of the encoder's GPU time on an H100. Here it
is one pass over the values:

    out[b, t, d] = m(b, t) * (v[b, t, d] + sum_k w[d, k] * m(b, t + k - left) * v[b, t + k - left, d]) + bias[d]

with m(b, s) = 1 for 0 <= s < lens[b] (the mask is one prefix per clip) and 0 elsewhere. `bias`
is optional: the caller folds the output projection's bias in, so that projection and residual
become one matrix product with an accumulate input (`torch.addmm`).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


if triton is not None:

    # Lengths and strides vary per batch: no specialising on them (a recompile each time one
    # crosses a multiple of 16 would stall a request for a second).
    @triton.jit(do_not_specialize=["T", "D", "stride_vb", "stride_vt"])
    def _fsmn_kernel(
        v_ptr, w_ptr, lens_ptr, bias_ptr, out_ptr,
        T, D, stride_vb, stride_vt,
        LEFT: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        ts = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
        ds = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        n = tl.load(lens_ptr + b)
        row = v_ptr + b.to(tl.int64) * stride_vb
        acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for k in tl.static_range(K):
            src = ts + (k - LEFT)
            ok = (src >= 0) & (src < n)
            x = tl.load(row + src[:, None] * stride_vt + ds[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
            w = tl.load(w_ptr + ds * K + k, mask=d_ok, other=0.0)
            acc += x.to(tl.float32) * w.to(tl.float32)[None, :]
        valid = (ts < n)[:, None] & d_ok[None, :]
        x = tl.load(row + ts[:, None] * stride_vt + ds[None, :], mask=valid, other=0.0)
        acc = tl.where(valid, acc + x.to(tl.float32), 0.0)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + ds, mask=d_ok, other=0.0).to(tl.float32)[None, :]
        t_ok = (ts < T)[:, None] & d_ok[None, :]
        out = out_ptr + b.to(tl.int64) * T * D + ts[:, None] * D + ds[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=t_ok)


def fsmn_memory(
    v: torch.Tensor, weight: torch.Tensor, lens: torch.Tensor, left: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The FSMN memory [B, T, D] (plus `bias`) of values v [B, T, D] (rows may be strided, the last
    dimension must be contiguous), depthwise weights [D, 1, K], per-clip lengths [B]."""
    batch, steps, dim = v.shape
    if v.stride(2) != 1:
        v = v.contiguous()
    kernel = weight.shape[-1]
    out = torch.empty(batch, steps, dim, device=v.device, dtype=v.dtype)
    w = weight.reshape(dim, kernel)  # read in its own dtype, accumulated in fp32
    block_t, block_d = 32, 128
    grid = (batch, triton.cdiv(steps, block_t), triton.cdiv(dim, block_d))
    _fsmn_kernel[grid](
        v, w.contiguous(), lens, bias if bias is not None else w, out,
        steps, dim, v.stride(0), v.stride(1),
        LEFT=left, K=kernel, HAS_BIAS=bias is not None, BLOCK_T=block_t, BLOCK_D=block_d,
    )
    return out
