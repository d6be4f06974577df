"""Fused attention for Paraformer's SANM encoder and decoder cross-attention.

funasr's ``MultiHeadedAttentionSANM`` (encoder self-attention plus an FSMN memory block) and
``MultiHeadedAttentionCrossAtt`` (decoder and SeACo bias decoder) compute
``softmax(QK^T / sqrt(d)) V`` with explicit matmuls, a ``-inf`` fill and a second pass that zeroes
masked probabilities. :func:`patch_attention` swaps only that product for a fused kernel on the
module instances; the projections and the weights stay funasr's own. On CUDA the same layers also
take two fused kernels that are not attention: the encoder's FSMN memory as one Triton kernel whose
output the output projection accumulates onto (``asr.engine.fsmn``), and the feed-forward block's ReLU in
its first matrix product's epilogue.

Backends:

* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with a boolean key mask when the
  batch is padded and no mask when it is not (so the flash kernel can run on CUDA).
* ``varlen``: PyTorch's variable-length flash attention, ``torch.nn.attention.varlen.varlen_attn``
  (CUDA, fp16/bf16). Padded keys are skipped without copying K/V: ``seqused_k`` where the torch
  build has it, otherwise zero-query filler sequences that swallow each clip's padding.
* ``flash-attn``: ``flash_attn_varlen_func`` from the optional ``flash_attn`` package, same layout.
* ``eager``: funasr's own code.

Masking semantics follow funasr exactly: masks hide keys only, so padded query rows still attend
to their clip's keys (their values reach the CIF tail token, see ``asr.engine.cif.predict``), and a row
whose keys are all masked gives zeros instead of NaN. Calls the fused kernels cannot serve
(``ret_attn=True``, streaming chunk masks, fp32 or CPU tensors for the varlen kernels) take the
next path down: varlen/flash-attn -> sdpa, and sdpa -> eager.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asr.engine import fsmn
from asr.engine.int8 import Int8Linear
from asr.engine.int8 import feed_forward as int8_feed_forward

__all__ = ["BACKENDS", "attach_prefix_mask", "available_backends", "patch_attention"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "flash-attn", "varlen", "sdpa", "rowwise", "rowwise-bf16", "eager")
_BACKEND_ATTR = "_asr_attention_backend"
_MASK_INFO_ATTR = "_asr_mask_info"


def _varlen_fn() -> Callable[..., torch.Tensor] | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return _undispatched(varlen_attn)


def _undispatched(public: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`varlen_attn` reaches its kernel through a custom op whose first call imports
    torch._dynamo (the op's kernel is wrapped in `_disable_dynamo`): 2 s on a 2-core CPU, up to
    3.9 s of the first batch on the GPU box, in every cold start. The op's own body (the same
    aten flash-attention call, no other state) is called directly where this torch build exposes
    it under the expected parameters; otherwise the public function."""
    from torch.nn.attention import varlen as module

    body = getattr(getattr(module, "_varlen_attn", None), "_init_fn", None)
    try:
        params = list(inspect.signature(body).parameters) if callable(body) else []
    except (TypeError, ValueError):
        params = []
    if params[:7] != ["query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k"]:
        return public
    accepted = set(params) & set(inspect.signature(public).parameters)

    def varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor,
               cu_seq_k: torch.Tensor, max_q: int, max_k: int, **extra: Any) -> torch.Tensor:
        return body(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **extra)[0]

    varlen.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  (read into _VARLEN_PARAMS)
        [p for name, p in inspect.signature(public).parameters.items() if name in accepted]
    )
    return varlen


def _flash_attn_fn() -> Callable[..., torch.Tensor] | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


# Importing varlen pulls in torch._dynamo (0.7 s); it only runs on CUDA, so a CPU process skips it.
_VARLEN = _varlen_fn() if torch.cuda.is_available() else None
_VARLEN_PARAMS = set(inspect.signature(_VARLEN).parameters) if _VARLEN is not None else set()
# seqused_k (torch >= 2.12) skips padded keys in place; older builds get filler sequences instead.
_VARLEN_SEQUSED_K = "seqused_k" in _VARLEN_PARAMS
_FLASH_ATTN = _flash_attn_fn()


def available_backends() -> list[str]:
    """Backends usable on this machine, fastest first."""
    cuda = torch.cuda.is_available()
    found = []
    if cuda and _FLASH_ATTN is not None:
        found.append("flash-attn")
    if cuda and _VARLEN is not None:
        found.append("varlen")
    cpu_bf16 = ["rowwise-bf16"] if cpu_bf16_native() else []
    return [*found, "sdpa", "rowwise", *cpu_bf16, "eager"]


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there a bf16 product runs
    about four times as fast as fp32 (measured on an AMD EPYC with 2 threads: a 4 x 500 x 128
    attention product 0.38 ms against 1.52 ms); without it bf16 is emulated and slower."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _resolve(requested: str) -> tuple[str, str | None]:
    """The backend to use for ``requested`` and, when it differs, why."""
    if requested not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {requested!r}")
    usable = available_backends()
    if requested == "auto":
        # PyTorch's own varlen kernel needs no extra package; prefer it over flash-attn.
        for name in ("varlen", "flash-attn", "sdpa"):
            if name in usable:
                return name, None
    if requested in usable:
        return requested, None
    if requested == "rowwise-bf16":
        return "rowwise", "this CPU has no native bf16 products"
    if not torch.cuda.is_available():
        reason = "no CUDA device"
    elif requested == "flash-attn":
        reason = "the flash_attn package is not installed"
    else:
        reason = f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn"
    fallback = "varlen" if requested == "flash-attn" and "varlen" in usable else "sdpa"
    return fallback, reason


@dataclass(frozen=True)
class _MaskInfo:
    # Boolean mask for SDPA, [B, 1, T1|1, T2]; rows without any key are opened up (and zeroed
    # after) because a fully masked SDPA row is NaN on some kernels. None: no padding at all.
    sdpa_mask: torch.Tensor | None
    # [B, 1, T1|1, 1] rows whose keys are all masked, or None if there are none.
    empty_rows: torch.Tensor | None
    # [B] int32 key lengths when the mask is one key-prefix per clip, else None.
    key_lens: torch.Tensor | None


def _mask_info(mask: torch.Tensor) -> _MaskInfo:
    """Digest a funasr mask (1 = keep; [B, 1, T2] or [B, T1, T2]) once per mask tensor.

    Encoder layers share one mask tensor, as do a decoder's layers, so the digest (and its one
    host sync) happens once per forward, not once per layer.
    """
    cached = getattr(mask, _MASK_INFO_ATTR, None)
    if cached is not None:
        return cached
    valid = mask != 0
    row_has_key = valid.any(dim=-1, keepdim=True)
    key_lens = valid[:, 0].sum(dim=-1)
    positions = torch.arange(valid.size(-1), device=mask.device)
    prefix = (valid == (positions < key_lens[:, None])[:, None, :]).all()
    if valid.size(1) != 1:
        prefix = torch.zeros_like(prefix)
    all_valid, any_empty, is_prefix = torch.stack([valid.all(), ~row_has_key.all(), prefix]).tolist()
    info = _MaskInfo(
        sdpa_mask=None if all_valid else (valid | ~row_has_key)[:, None],
        empty_rows=(~row_has_key)[:, None] if any_empty else None,
        key_lens=key_lens.to(torch.int32) if is_prefix else None,
    )
    # Some tensor subclasses refuse Python attributes; they just miss the cache.
    with contextlib.suppress(AttributeError, RuntimeError):
        setattr(mask, _MASK_INFO_ATTR, info)
    return info


def attach_prefix_mask(mask: torch.Tensor, lens: torch.Tensor) -> None:
    """Give `mask` ([B, 1, T], nonzero for each clip's first lens[b] frames, every lens[b] >= 1) its
    digest without the host sync `_mask_info` needs, so the attention can run inside a CUDA graph
    capture. The digest is computed from `lens` on the device, so it follows new lengths on replay.
    """
    info = _MaskInfo(sdpa_mask=(mask != 0)[:, None], empty_rows=None, key_lens=lens.to(torch.int32))
    setattr(mask, _MASK_INFO_ATTR, info)


def _varlen_attend(
    backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lens: torch.Tensor, scale: float,
    may_be_empty: bool = True,
) -> torch.Tensor:
    """[B, H, T1, D] queries over per-clip key prefixes -> [B, T1, H * D]."""
    batch, heads, t_q, dim = q.shape
    t_k = k.size(2)
    q_ = q.transpose(1, 2).reshape(batch * t_q, heads, dim)
    k_ = k.transpose(1, 2).reshape(batch * t_k, heads, dim)
    v_ = v.transpose(1, 2).reshape(batch * t_k, heads, dim)
    idx = torch.arange(batch + 1, device=q.device, dtype=torch.int32)
    extra: dict[str, Any] = {}
    if backend == "varlen":
        if "scale" in _VARLEN_PARAMS:
            extra["scale"] = scale
        elif abs(scale * dim**0.5 - 1.0) > 1e-6:
            # Early varlen_attn builds take no scale and use 1/sqrt(head_dim), funasr's own
            # scale; anything else is folded into the queries.
            q_ = q_ * (scale * dim**0.5)
    if backend == "varlen" and _VARLEN_SEQUSED_K:
        out = _VARLEN(q_, k_, v_, idx * t_q, idx * t_k, t_q, t_k, seqused_k=key_lens, **extra)
    else:
        # 2B sequences: clip b (all its queries, its first key_lens[b] keys), then a filler with
        # no queries that takes the clip's padded keys. No copy, no host sync.
        starts = idx[:-1] * t_k
        cu_k = torch.stack([starts, starts + key_lens], dim=1).reshape(-1)
        cu_k = torch.cat([cu_k, idx[-1:] * t_k])
        cu_q = (torch.arange(2 * batch + 1, device=q.device, dtype=torch.int32) + 1) // 2 * t_q
        if backend == "varlen":
            out = _VARLEN(q_, k_, v_, cu_q, cu_k, t_q, t_k, **extra)
        else:
            out = _FLASH_ATTN(q_, k_, v_, cu_q, cu_k, t_q, t_k, dropout_p=0.0, softmax_scale=scale)
    out = out.view(batch, t_q, heads * dim)
    if not may_be_empty:
        return out
    # A clip with no keys at all gives zeros, as in funasr.
    return torch.where((key_lens > 0)[:, None, None], out, 0.0)


def _attend(
    module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
    self_attention: bool = False,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with funasr's masking, [B, H, T1, D] -> [B, T1, H * D]."""
    backend = getattr(module, _BACKEND_ATTR)
    scale = module.d_k**-0.5
    info = _mask_info(mask) if mask is not None else None
    if backend in ("rowwise", "rowwise-bf16") and (info is None or info.key_lens is not None):
        lens = None if info is None else info.key_lens
        return _rowwise_attend(q, k, v, lens, scale, self_attention, bf16=backend == "rowwise-bf16")
    if (
        backend in ("varlen", "flash-attn")
        and info is not None
        and info.sdpa_mask is not None
        and info.key_lens is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and not (module.training and module.dropout.p > 0)
    ):
        return _varlen_attend(backend, q, k, v, info.key_lens, scale, may_be_empty=info.empty_rows is not None)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=None if info is None else info.sdpa_mask,
        dropout_p=module.dropout.p if module.training else 0.0,
        scale=scale,
    )
    if info is not None and info.empty_rows is not None:
        out = out.masked_fill(info.empty_rows, 0.0)
    batch, heads, t_q, dim = out.shape
    return out.transpose(1, 2).reshape(batch, t_q, heads * dim)


# The bf16 per-clip attention's keys and query rows are padded to a multiple of this (see
# `_rowwise_attend`); coarser steps mean fewer shapes for oneDNN to keep, finer ones less padding.
ROWWISE_STEP = 32


def _steps(x: torch.Tensor, n: int) -> torch.Tensor:
    """x[:, :n] ([H, T, D]) widened to the next multiple of ROWWISE_STEP: a view where the batch
    is that wide, zero-padded otherwise."""
    width = -(-n // ROWWISE_STEP) * ROWWISE_STEP
    if width <= x.size(1):
        return x[:, :width]
    return F.pad(x, (0, 0, 0, width - x.size(1)))


def _rowwise_attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lens: torch.Tensor | None, scale: float,
    self_attention: bool, bf16: bool = False,
) -> torch.Tensor:
    """funasr's attention arithmetic one clip at a time, over exactly its own keys (and, for
    self-attention, its own queries; padded query rows are zero, which nothing downstream reads:
    the FSMN memory and the predictor mask them). A batched product over padded keys sums in an
    order that depends on the padded length, so a clip's result would depend on its companions:
    on the CPU 4.6% of 10-16 s clips of the random tiny model changed tokens when batched.

    `bf16`: the two products take bf16 inputs (fp32 accumulation; the softmax stays fp32), as
    the GPU's attention does; for the int8 path on CPUs with native bf16 (`cpu_bf16_native`).
    There a clip's keys and query rows are also rounded up to `ROWWISE_STEP` (the keys past its
    own masked out of the softmax): oneDNN keeps a compiled product per shape, and one per clip
    length let a long recording's process grow by hundreds of MB (BENCHMARKS.md, 2026-12-04).
    The masked keys add exact zeros, but oneDNN may block the longer sums differently, so a last
    bit can differ from the unpadded products (one character of an hour of the demonstration
    model changed; its int8 CER and agreement with fp32 did not). The rounding depends on the
    clip's own length only, so a clip's result never depends on its companions."""
    batch, heads, t_q, dim = q.shape
    lens = [k.size(2)] * batch if key_lens is None else key_lens.tolist()
    out = q.new_empty(batch, t_q, heads, dim)
    if bf16:
        # q * scale in fp32, rounded once to bf16 on the way out: the values of
        # (q * scale).to(bf16) without the fp32 intermediate.
        q = torch.mul(q, scale, out=torch.empty(q.shape, dtype=torch.bfloat16))
        k, v = k.to(torch.bfloat16), v.to(torch.bfloat16)
    else:
        q = q * scale  # elementwise: the same values as funasr's per-clip scaling
    for b, n in enumerate(lens):
        rows = min(n, t_q) if self_attention else t_q
        if n == 0:
            rows = 0  # no keys: zeros, as funasr's masking gives
        elif bf16:
            keys, values = _steps(k[b], n), _steps(v[b], n)
            scores = torch.matmul(_steps(q[b], rows), keys.transpose(-2, -1))
            if keys.size(1) > n:
                scores[..., n:] = float("-inf")  # exactly zero weight: the sums over keys are its own
            # bf16 in and out: torch's CPU softmax computes a bf16 row in fp32 and rounds once, the
            # values of softmax(dtype=float32).to(bf16) without its two casting passes over the
            # scores (384 against 222 us for 4 x 448 x 448; equal to the bit on 1.9 M values).
            weights = torch.softmax(scores, dim=-1)
            attended = torch.matmul(weights, values)[:, :rows]
            out[b, :rows].copy_(attended.transpose(0, 1))
        else:
            scores = torch.matmul(q[b, :, :rows], k[b, :, :n].transpose(-2, -1))
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
            attended = torch.matmul(weights, v[b, :, :n])
            out[b, :rows].copy_(attended.transpose(0, 1))  # one strided copy (and cast) into place
        if rows < t_q:
            out[b, rows:].zero_()  # only the rows no product wrote: no pass over the whole output
    return out.view(batch, t_q, heads * dim)


def _sanm_forward(
    self: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    mask_shfit_chunk: torch.Tensor | None = None,
    mask_att_chunk_encoder: torch.Tensor | None = None,
) -> torch.Tensor:
    if mask_att_chunk_encoder is not None:  # streaming chunk masks: funasr's own code
        return type(self).forward(self, x, mask, mask_shfit_chunk, mask_att_chunk_encoder)
    q_h, k_h, v_h, v = self.forward_qkv(x)
    info = _mask_info(mask) if mask is not None else None
    if info is not None and info.key_lens is not None and mask_shfit_chunk is None and _fused_fsmn_fits(self, v):
        # One kernel for the FSMN memory (plus the output bias), then projection and residual
        # as one matrix product that accumulates onto it.
        memory = fsmn.fsmn_memory(v, self.fsmn_block.weight, info.key_lens, self.pad_fn.padding[0],
                                  self.linear_out.bias)
        attended = _attend(self, q_h, k_h, v_h, mask, self_attention=True)
        batch, steps, dim = memory.shape
        out = torch.addmm(memory.view(-1, dim), attended.reshape(batch * steps, -1), self.linear_out.weight.t())
        return out.view(batch, steps, dim)
    if mask_shfit_chunk is None and not v.is_cuda and _conv_is_depthwise_same(self, v):
        memory = _fsmn_channels_last(self, v, mask)
        out = self.linear_out(_attend(self, q_h, k_h, v_h, mask, self_attention=True))
        out += memory  # the same sum as funasr's `linear_out(...) + memory`, without a new buffer
        return out
    fsmn_memory = self.forward_fsmn(v, mask, mask_shfit_chunk)
    return self.linear_out(_attend(self, q_h, k_h, v_h, mask, self_attention=True)) + fsmn_memory


def _conv_is_depthwise_same(module: nn.Module, v: torch.Tensor) -> bool:
    """Whether `module`'s FSMN block is the plain depthwise convolution funasr builds (inference)."""
    conv = module.fsmn_block
    return (
        not module.training
        and conv.stride == (1,)
        and conv.dilation == (1,)
        and conv.padding == (0,)
        and conv.groups == conv.in_channels == conv.out_channels == v.size(-1)
        and sum(module.pad_fn.padding) == conv.kernel_size[0] - 1
    )


def _fsmn_channels_last(module: nn.Module, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return _fsmn_channels_last_padded(module, v, mask)[0]


def _fsmn_channels_last_padded(
    module: nn.Module, v: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """funasr's `forward_fsmn` (inference, no chunk mask), the same values to the bit, with the
    depthwise convolution run on the values' own [B, T, D] layout (oneDNN's channels-last kernel)
    instead of on a transposed copy: funasr transposes, pads and copies the values to [B, D, T],
    convolves, transposes back and then adds and masks through strided views. Measured on 2 cores
    (2 x 337 frames x 512): 0.63 ms -> 0.14 ms a layer."""
    batch, steps, dim = v.shape
    left, right = module.pad_fn.padding
    # The convolution runs over `step_rung(steps)` frames, zeros past the clip's: oneDNN keeps a
    # compiled convolution (and an input reorder) per shape, and a long recording's batches bring
    # a new frame count nearly every time. Each output is the same 11-tap sum whatever the width.
    padded = v.new_empty(batch, left + step_rung(steps) + right, dim)
    padded[:, :left].zero_()
    padded[:, left + steps :].zero_()
    inputs = padded[:, left : left + steps]
    mask3 = None if mask is None else mask.reshape(batch, -1, 1)
    if mask3 is None:
        inputs.copy_(v)
    else:
        torch.mul(v, mask3, out=inputs)
    conv = module.fsmn_block
    # [B, D, 1, T'] with channels-last strides: conv2d runs on it without a copy, and its output
    # is channels-last too, so the transpose back is [B, T', D] contiguous.
    x = F.conv2d(padded.transpose(1, 2).unsqueeze(2), conv.weight.unsqueeze(2), conv.bias, 1, 0, 1, conv.groups)
    x = x.squeeze(2).transpose(1, 2)[:, :steps].contiguous()  # a copy only where the width was padded
    x += inputs
    # Also the padded, masked input as [B, D, T'], the values funasr's decoder returns as its cache.
    return (x if mask3 is None else x.mul_(mask3)), padded[:, : left + steps + right].transpose(1, 2)


def step_rung(n: int) -> int:
    """n rounded up to one of 8 evenly spaced sizes per doubling (at most 1/8 more; n itself up
    to 16): a few dozen lengths up to a long segment's, whatever lengths come."""
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def _sanm_decoder_forward(
    self: nn.Module,
    inputs: torch.Tensor,
    mask: torch.Tensor | None,
    cache: torch.Tensor | None = None,
    mask_shfit_chunk: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """funasr's decoder FSMN (`MultiHeadedAttentionSANMDecoder`) on the CPU as the encoder's
    (`_fsmn_channels_last`): the same values to the bit. Streaming calls (a cache, a chunk mask)
    run funasr's own code."""
    if cache is not None or mask_shfit_chunk is not None or inputs.is_cuda or not _conv_is_depthwise_same(self, inputs):
        return type(self).forward(self, inputs, mask, cache, mask_shfit_chunk)
    return _fsmn_channels_last_padded(self, inputs, mask)


def _fused_fsmn_fits(module: nn.Module, v: torch.Tensor) -> bool:
    """Whether the FSMN memory of `module` can take the fused kernel (`asr.engine.fsmn`)."""
    conv = module.fsmn_block
    return (
        fsmn.available(v.device)
        and not module.training
        and type(module.linear_out) is nn.Linear
        and conv.stride == (1,)
        and conv.dilation == (1,)
        and conv.groups == conv.in_channels == v.size(-1)
        and sum(module.pad_fn.padding) == conv.kernel_size[0] - 1
    )


def _cross_forward(
    self: nn.Module,
    x: torch.Tensor,
    memory: torch.Tensor,
    memory_mask: torch.Tensor | None,
    ret_attn: bool = False,
) -> Any:
    if ret_attn:  # SeACo's hotword filter reads the attention matrix: funasr's own code
        return type(self).forward(self, x, memory, memory_mask, ret_attn=True)
    q_h, k_h, v_h = self.forward_qkv(x, memory)
    return self.linear_out(_attend(self, q_h, k_h, v_h, memory_mask))


def _ffn_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """funasr's PositionwiseFeedForward (Linear, ReLU, Linear) with the ReLU in the first matrix
    product's epilogue (cuBLASLt), which saves a pass over the 4x-wide hidden activations. With
    int8 layers (the CPU) the first layer's epilogue, the ReLU and the second layer's quantisation
    run as one kernel (`int8.feed_forward`). The same values to the bit either way."""
    w_1 = self.w_1
    if not self.training and isinstance(w_1, Int8Linear) and isinstance(self.w_2, Int8Linear):
        return int8_feed_forward(w_1, self.w_2, x)
    if not (x.is_cuda and x.dtype == w_1.weight.dtype and not self.training and w_1.bias is not None):
        return type(self).forward(self, x)
    hidden = torch._addmm_activation(w_1.bias, x.reshape(-1, x.size(-1)), w_1.weight.t())
    return self.w_2(hidden.view(*x.shape[:-1], -1))


def _encoder_layer_forward(
    self: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    cache: torch.Tensor | None = None,
    mask_shfit_chunk: torch.Tensor | None = None,
    mask_att_chunk_encoder: torch.Tensor | None = None,
) -> tuple[Any, ...]:
    """funasr's EncoderLayerSANM at inference on the CPU, the same values to the bit, with fewer
    passes: funasr multiplies both branches by stochastic depth's coefficient, which is 1.0
    outside training (two full passes a layer for nothing: 1.0 * a == a), and adds the residual
    into a new tensor where the branch's own fresh output can take it (a + b == b + a)."""
    if (
        x.is_cuda
        or self.training
        or cache is not None
        or self.concat_after
        or not self.normalize_before
    ):
        return type(self).forward(self, x, mask, cache, mask_shfit_chunk, mask_att_chunk_encoder)
    attended = self.self_attn(
        self.norm1(x), mask, mask_shfit_chunk=mask_shfit_chunk, mask_att_chunk_encoder=mask_att_chunk_encoder
    )
    if self.in_size == self.size:
        attended += x
    x = attended
    out = self.feed_forward(self.norm2(x))
    out += x
    return out, mask, cache, mask_shfit_chunk, mask_att_chunk_encoder


def patch_attention(model: nn.Module, backend: str = "sdpa") -> str:
    """Route every SANM / cross attention in ``model`` through ``backend``.

    Replaces ``forward`` on the attention instances (weights untouched); ``'eager'`` restores
    funasr's own. Calling it again switches backends. Logs one line with the choice.

    Args:
        model: any module tree holding funasr ``MultiHeadedAttentionSANM`` or
            ``MultiHeadedAttentionCrossAtt`` instances (encoder, decoders, a whole model).
        backend: one of ``BACKENDS``; an unavailable one falls back (flash-attn -> varlen ->
            sdpa). ``'auto'`` picks the fastest available.

    Returns:
        The backend actually chosen.
    """
    from funasr.models.sanm.attention import (
        MultiHeadedAttentionCrossAtt,
        MultiHeadedAttentionSANM,
        MultiHeadedAttentionSANMDecoder,
    )
    from funasr.models.sanm.encoder import EncoderLayerSANM
    from funasr.models.transformer.positionwise_feed_forward import PositionwiseFeedForward

    chosen, reason = _resolve(backend)
    patched = 0
    for module in model.modules():
        if isinstance(module, MultiHeadedAttentionSANM):
            forward = _sanm_forward
        elif isinstance(module, MultiHeadedAttentionCrossAtt):
            forward = _cross_forward
        elif type(module) is PositionwiseFeedForward and isinstance(module.activation, nn.ReLU):
            forward = _ffn_forward  # not attention, but the same layers' fused-kernel path
        elif type(module) is MultiHeadedAttentionSANMDecoder:
            forward = _sanm_decoder_forward  # the decoder's FSMN block (no attention in it)
        elif type(module) is EncoderLayerSANM:
            forward = _encoder_layer_forward  # the layer around them, on the CPU (see there)
        else:
            continue
        patched += isinstance(module, (MultiHeadedAttentionSANM, MultiHeadedAttentionCrossAtt))
        if chosen == "eager":
            module.__dict__.pop("forward", None)
            module.__dict__.pop(_BACKEND_ATTR, None)
        else:
            module.forward = MethodType(forward, module)
            setattr(module, _BACKEND_ATTR, chosen)
    if reason:
        logger.info("attention: %s requested, using %s (%s); %d modules", backend, chosen, reason, patched)
    else:
        logger.info("attention: using %s for %d modules", chosen, patched)
    return chosen
