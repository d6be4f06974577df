"""A persistent bidirectional LSTM kernel for the CIF timestamp head (CUDA, fp16/bf16, Triton).

The timestamp head runs a one-layer BLSTM (512 units) over three times the encoder frame rate:
1,500 steps for a 30 s clip. cuDNN runs such a recurrence as a host loop of small kernels per step
and direction, so a batch costs thousands of launches whose host time exceeds their GPU time.

Here the input projections of every step and both directions are one batched matrix product, and
the recurrence is ONE kernel launch: each program owns a block of batch rows and a block of hidden
units of one direction, keeps its cell state in registers, and loops over all time steps. A step
needs the whole previous hidden state of its rows, which other programs of the same (direction,
row block) group wrote, so the group meets at a barrier (an atomic counter) after every step.
Hidden states go straight to the output tensor, which is also where the next step reads them.

Forward progress: programs of a group only wait for each other, never for another group. Hidden
blocks vary fastest in the launch grid, so a group's programs are dispatched together, and one
group (H / BLOCK_H programs) always fits on the GPU at once.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

try:  # Triton ships with CUDA builds of PyTorch; CPU installs run cuDNN/ATen's LSTM instead.
    import triton
    import triton.language as tl
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    OutOfResources = RuntimeError

_HALF = (torch.float16, torch.bfloat16)


def fused_available(device: torch.device, dtype: torch.dtype, hidden: int = 512) -> bool:
    """Whether `blstm` can run the fused kernel for a `hidden`-unit LSTM on `device` in `dtype`:
    a group of programs that wait for each other must fit on the GPU at once."""
    if triton is None or device.type != "cuda" or dtype not in _HALF:
        return False
    return bool(_fitting(_CANDIDATES[_BLOCK_B[0]], hidden, _sm_count(device)))


def _sm_count(device: torch.device) -> int:
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count_of(index: int) -> int:
    # Asked on every BLSTM call (twice: the caller's check and the launch); a device's SM count
    # never changes.
    return torch.cuda.get_device_properties(index).multi_processor_count


def _fitting(candidates: tuple[LaunchConfig, ...], hidden: int, sm_count: int) -> tuple[LaunchConfig, ...]:
    """The configurations whose groups (hidden / block_h programs, one per SM at worst) fit."""
    return tuple(c for c in candidates if hidden // min(c.block_h, hidden) <= sm_count)


if triton is not None:

    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _tanh(x):
        # tanh(x) = 2 sigmoid(2x) - 1, without overflow for large |x|.
        return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0

    @triton.jit
    def _load_gates(x_t, row_ok, H: tl.constexpr):
        gate_i = tl.load(x_t, mask=row_ok[:, None], other=0.0).to(tl.float32)
        gate_f = tl.load(x_t + H, mask=row_ok[:, None], other=0.0).to(tl.float32)
        gate_g = tl.load(x_t + 2 * H, mask=row_ok[:, None], other=0.0).to(tl.float32)
        gate_o = tl.load(x_t + 3 * H, mask=row_ok[:, None], other=0.0).to(tl.float32)
        return gate_i, gate_f, gate_g, gate_o

    @triton.jit(do_not_specialize=["B", "T"])  # one compiled kernel for every batch shape
    def _blstm_kernel(
        xg_ptr,  # [2, B, T, 4H]: input projection + both biases; direction 1 already time-reversed
        w_ptr,  # [2, 4, H, H]: recurrent weights as (direction, gate, input unit k, hidden unit j)
        y_ptr,  # [2, B, T, H]: hidden states out; step t reads step t-1 from here
        sync_ptr,  # [2 * row blocks] int32, zero: one barrier counter per group
        B,
        T,
        H: tl.constexpr,
        BLOCK_B: tl.constexpr,
        BLOCK_H: tl.constexpr,
        BLOCK_K: tl.constexpr,
        RESIDENT: tl.constexpr,  # keep this program's weight slice on chip for all steps
    ):
        groups_per_dir = tl.cdiv(B, BLOCK_B)
        pid_h = tl.program_id(0)
        group = tl.program_id(1)
        direction = group // groups_per_dir
        rows = (group % groups_per_dir) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        cols = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)

        rows64 = rows.to(tl.int64)
        xg_rows = xg_ptr + direction.to(tl.int64) * B * T * 4 * H + rows64[:, None] * (T * 4 * H) + cols[None, :]
        y_rows = y_ptr + direction.to(tl.int64) * B * T * H + rows64 * (T * H)
        w_dir = w_ptr + direction * (4 * H * H)
        counter = sync_ptr + group
        n_programs: tl.constexpr = H // BLOCK_H

        if RESIDENT:
            hk = tl.arange(0, H)
            w_tile = w_dir + hk[:, None] * H + cols[None, :]
            w_i = tl.load(w_tile)
            w_f = tl.load(w_tile + H * H)
            w_g = tl.load(w_tile + 2 * H * H)
            w_o = tl.load(w_tile + 3 * H * H)

        c = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
        gate_i, gate_f, gate_g, gate_o = _load_gates(xg_rows, row_ok, H)
        for t in range(T):
            if t > 0:
                # .cg: read from L2, where the other programs' writes of step t-1 are.
                h_prev = y_rows[:, None] + (t - 1) * H
                if RESIDENT:
                    h = tl.load(h_prev + hk[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
                    gate_i += tl.dot(h, w_i)
                    gate_f += tl.dot(h, w_f)
                    gate_g += tl.dot(h, w_g)
                    gate_o += tl.dot(h, w_o)
                else:
                    ks = tl.arange(0, BLOCK_K)
                    for k0 in tl.static_range(0, H, BLOCK_K):
                        h = tl.load(h_prev + k0 + ks[None, :], mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
                        w = w_dir + (k0 + ks)[:, None] * H + cols[None, :]
                        gate_i += tl.dot(h, tl.load(w))
                        gate_f += tl.dot(h, tl.load(w + H * H))
                        gate_g += tl.dot(h, tl.load(w + 2 * H * H))
                        gate_o += tl.dot(h, tl.load(w + 3 * H * H))
            c = _sigmoid(gate_f) * c + _sigmoid(gate_i) * _tanh(gate_g)
            h_new = _sigmoid(gate_o) * _tanh(c)
            tl.store(y_rows[:, None] + t * H + cols[None, :], h_new.to(y_ptr.dtype.element_ty), mask=row_ok[:, None])
            # The next step's input gates do not depend on h: load them before the barrier wait.
            next_ok = row_ok & (t + 1 < T)
            gate_i, gate_f, gate_g, gate_o = _load_gates(xg_rows + (t + 1) * (4 * H), next_ok, H)
            if n_programs > 1:
                # Barrier of the group: every program's slice of h_t is written before any reads it.
                tl.debug_barrier()
                tl.atomic_add(counter, 1, sem="release")
                target = (t + 1) * n_programs
                while tl.atomic_add(counter, 0, sem="acquire") < target:
                    pass
                tl.debug_barrier()


class PackedBLSTM:
    """A one-layer bidirectional ``torch.nn.LSTM``'s weights, laid out for the kernel."""

    def __init__(self, lstm: torch.nn.LSTM, dtype: torch.dtype) -> None:
        if lstm.num_layers != 1 or not lstm.bidirectional or not lstm.batch_first or lstm.proj_size:
            raise ValueError("the fused kernel serves a one-layer, batch-first, bidirectional LSTM")
        hidden = lstm.hidden_size
        if hidden % 16 or hidden & (hidden - 1):
            raise ValueError(f"the fused kernel needs a power-of-two hidden size >= 16, got {hidden}")
        self.hidden = hidden
        self.dtype = dtype
        with torch.no_grad():
            w_ih, w_hh, bias = [], [], []
            for suffix in ("", "_reverse"):
                w_ih.append(getattr(lstm, "weight_ih_l0" + suffix).float().t())
                # (4H, H) rows are gate-major: [i; f; g; o] x hidden unit j, columns input unit k.
                w_hh.append(getattr(lstm, "weight_hh_l0" + suffix).float().view(4, hidden, hidden).transpose(1, 2))
                b = getattr(lstm, "bias_ih_l0" + suffix).float() + getattr(lstm, "bias_hh_l0" + suffix).float()
                bias.append(b[None, :])
            self.w_ih = torch.stack(w_ih).to(dtype).contiguous()  # [2, I, 4H]
            self.w_hh = torch.stack(w_hh).to(dtype).contiguous()  # [2, 4, H(k), H(j)]
            self.bias = torch.stack(bias).to(dtype).contiguous()  # [2, 1, 4H]


_BLOCK_B = (16, 32, 64)  # rows per program, by batch size: one compiled kernel each


@dataclass(frozen=True)
class LaunchConfig:
    block_h: int  # hidden units per program
    block_k: int  # reduction chunk when the weights are streamed
    resident: bool  # weight slice held in shared memory for all steps
    num_warps: int


# Fastest first, per rows per program (measured on an H100/H200: B=40 x 1,500 steps takes 9.7 ms
# resident vs 19.8 ms streamed vs 68 ms in cuDNN). Resident slices need ~128 KiB of shared
# memory; GPUs with less (RTX 30/40, A10) raise OutOfResources and take the streamed kernel.
_STREAMED = LaunchConfig(32, 64, False, 4)
_CANDIDATES = {
    16: (LaunchConfig(16, 64, True, 4), _STREAMED),
    32: (LaunchConfig(16, 64, True, 8), _STREAMED),
    64: (LaunchConfig(16, 64, True, 8), _STREAMED),
}
_chosen: dict[tuple[int, int, torch.dtype, int], LaunchConfig] = {}


def packed(lstm: torch.nn.LSTM, dtype: torch.dtype) -> PackedBLSTM:
    """The kernel's weights for `lstm` in `dtype` (built once and cached on the module)."""
    cached: PackedBLSTM | None = lstm.__dict__.get("_asr_packed")
    if cached is None or cached.dtype != dtype or cached.w_ih.device != lstm.weight_ih_l0.device:
        cached = PackedBLSTM(lstm, dtype)
        # Kept outside _modules so the model's state dict and .to() do not see the copies.
        lstm.__dict__["_asr_packed"] = cached
    return cached


def blstm(lstm: torch.nn.LSTM, x: torch.Tensor, x_reversed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both directions of `lstm` with the fused kernel.

    Args:
        lstm: a one-layer bidirectional batch-first LSTM (its weights are read, not changed).
        x: [B, T, I] input, fp16 or bf16, on a CUDA device.
        x_reversed: the same input with each row's valid steps reversed (the backward direction's
            input, so that it starts at each row's own end).

    Returns:
        (forward hidden states [B, T, H], backward hidden states [B, T, H] in x_reversed's order).
    """
    if not fused_available(x.device, x.dtype, lstm.hidden_size):
        raise RuntimeError("the fused BLSTM kernel needs Triton, a CUDA device and fp16/bf16 inputs")
    weights = packed(lstm, x.dtype)
    batch, steps, _ = x.shape
    hidden = weights.hidden
    inputs = torch.stack([x, x_reversed]).view(2, batch * steps, -1)
    xg = torch.baddbmm(weights.bias, inputs, weights.w_ih)  # [2, B*T, 4H]
    y = torch.empty(2, batch, steps, hidden, device=x.device, dtype=x.dtype)
    block_b = next((b for b in _BLOCK_B if batch <= b), _BLOCK_B[-1])
    row_blocks = triton.cdiv(batch, block_b)
    key = (block_b, hidden, x.dtype, x.device.index or 0)
    candidates = (_chosen[key],) if key in _chosen else _fitting(_CANDIDATES[block_b], hidden, _sm_count(x.device))
    for config in candidates:
        block_h = min(config.block_h, hidden)
        sync = torch.zeros(2 * row_blocks, device=x.device, dtype=torch.int32)
        grid: Any = (hidden // block_h, 2 * row_blocks)
        try:
            _blstm_kernel[grid](
                xg, weights.w_hh, y, sync, batch, steps,
                H=hidden, BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=min(config.block_k, hidden),
                RESIDENT=config.resident, num_warps=config.num_warps,
            )
        except OutOfResources as exc:
            log.info("BLSTM kernel %s does not fit this GPU (%s); trying the next", config, exc)
            continue
        _chosen[key] = config
        return y[0], y[1]
    raise RuntimeError("no configuration of the fused BLSTM kernel fits this GPU")


def compile_all(lstm: torch.nn.LSTM, dtype: torch.dtype) -> None:
    """Compile the kernel for every row-block size now, so no request waits for Triton."""
    device = lstm.weight_ih_l0.device
    for batch in _BLOCK_B:
        x = torch.zeros(batch, 2, lstm.input_size, device=device, dtype=dtype)
        blstm(lstm, x, x)
