"""Vectorised continuous integrate-and-fire (CIF) for Paraformer's predictor.

funasr integrates the predictor weights ("alphas") frame by frame in a Python loop, which costs
one small kernel launch per encoder frame and per upsampled timestamp frame. Here the same
integrate-and-fire is computed from cumulative sums in a handful of batched tensor operations:

* A frame ``t`` fires when the running integral reaches the threshold. With ``S_t`` the cumulative
  sum of alphas and ``k_{t-1}`` the number of fires before ``t``, funasr's loop fires iff
  ``S_t - reset * k_{t-1} >= threshold`` (``reset`` is what it subtracts after a fire: 1 in
  :func:`cif`, the threshold in :func:`cif_wo_hidden`). With ``g_t = floor((S_t - threshold) /
  reset) + 1`` that is ``g_t > k_{t-1}``, so ``k_t = min(g_t, k_{t-1} + 1)``, whose closed form is
  ``k_t = t + min(1, cummin_{s<=t}(g_s - s))``. This stays exact even when one frame's alpha is
  larger than the threshold (funasr then fires on consecutive frames).
* Each frame's weight goes to the token being integrated (``k_{t-1}``); on a firing frame only the
  part that completes the token does, and the rest starts the next token. Embeddings are segment
  sums of ``weight * hidden`` done with ``index_add_``.

Cumulative sums run in float64, so fire positions equal funasr's fp32 loop except where a running
sum lies within the loop's own rounding drift (about 1e-6) of a threshold; there the float64 sum is
the more accurate one. Alphas must be non-negative (they are: the predictor ends with a ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from asr.engine import lstm as lstm_kernels
from asr.engine import lstm_cpu

__all__ = ["LSTM_KERNELS", "cif", "cif_wo_hidden", "predict"]

LSTM_KERNELS = ("auto", "fused", "cudnn", "cpu-f16")


def _as_fp32(value: float) -> float:
    # funasr compares fp32 tensors with a Python float, which torch does in fp32; using the same
    # rounded threshold keeps fire decisions identical at values such as 1 - 1e-4.
    return float(torch.tensor(value, dtype=torch.float32))


def _integrate(
    alphas: torch.Tensor, threshold: float, reset: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fire bookkeeping for a [B, T] alpha matrix.

    Returns (cumsum float64, fires before each frame, fired mask, pre-reset integral float64).
    """
    csum = alphas.to(torch.float64).cumsum(dim=1)
    steps = torch.arange(alphas.size(1), device=alphas.device)
    ideal = torch.floor((csum - threshold) / reset).add_(1).clamp_(min=0).to(torch.int64)
    count = steps + torch.cummin(ideal - steps, dim=1).values.clamp_(max=1)
    count_before = F.pad(count[:, :-1], (1, 0))
    fired = count > count_before
    integral = csum - count_before.to(torch.float64) * reset
    return csum, count_before, fired, integral


def cif_wo_hidden(alphas: torch.Tensor, threshold: float) -> torch.Tensor:
    """Integrate-and-fire peaks without embeddings (funasr's ``cif_wo_hidden``).

    Args:
        alphas: [B, T] non-negative weights, any float dtype, any device.
        threshold: firing threshold; after a fire the threshold is subtracted.

    Returns:
        [B, T] float32 integral before each frame's reset; ``>= threshold`` marks a fire.
    """
    if alphas.dim() != 2:
        raise ValueError(f"alphas must be [batch, time], got shape {tuple(alphas.shape)}")
    if alphas.size(1) == 0:
        return alphas.new_zeros(alphas.shape, dtype=torch.float32)
    thr = _as_fp32(threshold)
    _, _, _, integral = _integrate(alphas, thr, thr)
    return integral.to(torch.float32)


def _cif(
    hidden: torch.Tensor, alphas: torch.Tensor, threshold: float, out_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, frames, dim = hidden.shape
    thr = _as_fp32(threshold)
    alphas64 = alphas.to(torch.float64)
    csum, count_before, fired, integral = _integrate(alphas, thr, 1.0)
    csum_before = F.pad(csum[:, :-1], (1, 0))
    # On a firing frame the token takes only what completes it (1 - running integral).
    completion = 1.0 - (csum_before - count_before.to(torch.float64))
    head = torch.where(fired, completion, alphas64)
    tail = alphas64 - head

    # Only completed tokens are emitted (the trailing partial one is dropped, as funasr does);
    # everything else is routed to a dump slot at index out_len that is cut off at the end.
    emitted = count_before[:, -1:] + fired[:, -1:].to(torch.int64)
    slots = out_len + 1
    base = torch.arange(batch, device=hidden.device)[:, None] * slots
    head_token = count_before
    tail_token = count_before + 1
    head_idx = base + torch.where(head_token < emitted, head_token, out_len).clamp_(max=out_len)
    tail_ok = fired & (tail_token < emitted)
    tail_idx = base + torch.where(tail_ok, tail_token, out_len).clamp_(max=out_len)

    hidden32 = hidden.to(torch.float32)
    out = hidden32.new_zeros(batch * slots, dim)
    out.index_add_(0, head_idx.reshape(-1), (head.to(torch.float32)[..., None] * hidden32).reshape(-1, dim))
    tail32 = torch.where(tail_ok, tail, 0.0).to(torch.float32)
    out.index_add_(0, tail_idx.reshape(-1), (tail32[..., None] * hidden32).reshape(-1, dim))
    embeds = out.view(batch, slots, dim)[:, :out_len].to(hidden.dtype)
    return embeds, integral.to(torch.float32)


def cif(hidden: torch.Tensor, alphas: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate-and-fire token embeddings (funasr's ``cif``), without a per-frame loop.

    Args:
        hidden: [B, T, D] encoder states, any float dtype, any device.
        alphas: [B, T] non-negative weights.
        threshold: firing threshold; after a fire 1.0 is subtracted (as in funasr).

    Returns:
        (acoustic_embeds [B, N, D] in ``hidden.dtype`` (accumulated in fp32), fires [B, T] float32)
        where ``N = round(alphas.sum(-1)).max()`` like funasr. Tokens past ``N`` (funasr raises
        there) are dropped. Reading ``N`` is the one host sync.
    """
    if hidden.dim() != 3 or alphas.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [batch, time, dim] and alphas [batch, time], got "
            f"{tuple(hidden.shape)} and {tuple(alphas.shape)}"
        )
    if hidden.size(1) == 0:
        return hidden.new_zeros(hidden.size(0), 0, hidden.size(2)), alphas.new_zeros(
            alphas.shape, dtype=torch.float32
        )
    out_len = int(torch.round(alphas.to(torch.float32).sum(-1)).max())
    return _cif(hidden, alphas, threshold, max(out_len, 0))


def _lstm_directions(blstm: torch.nn.LSTM) -> tuple[torch.nn.LSTM, torch.nn.LSTM]:
    """The forward and backward halves of a one-layer BLSTM as two plain LSTMs (cached)."""
    cached = blstm.__dict__.get("_asr_directions")
    weight = blstm.weight_ih_l0
    if cached is not None and cached[0].weight_ih_l0.dtype == weight.dtype:
        return cached
    halves = []
    for suffix in ("", "_reverse"):
        lstm = torch.nn.LSTM(blstm.input_size, blstm.hidden_size, 1, bias=True, batch_first=True)
        lstm = lstm.to(device=weight.device, dtype=weight.dtype).requires_grad_(False)
        with torch.no_grad():
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                getattr(lstm, name).copy_(getattr(blstm, name + suffix))
        lstm.flatten_parameters()
        halves.append(lstm)
    # Kept outside _modules so the model's state dict and .to() do not see the copies.
    blstm.__dict__["_asr_directions"] = (halves[0], halves[1])
    return blstm.__dict__["_asr_directions"]


CPU_LSTM_STEPS = 256
"""Steps per call of the BLSTM on the CPU (see `_run_lstm`)."""


def _run_lstm(lstm: torch.nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """A batch-first one-layer LSTM's outputs. On the CPU in windows of `CPU_LSTM_STEPS` steps, the
    state carried from one to the next, the last one padded: oneDNN caches one RNN primitive,
    with its gate workspace, per input shape (up to 1,024), so one call per batch length kept
    ~10 MB (512 units, 8 rows) for every length a process saw: 11 lengths +101 MB in one call
    each, +5 MB in windows, at the same speed (2 cores). Fixed windows are a handful of shapes;
    the recurrence and its products are the same, so the outputs equal one call's to float
    rounding (tested; bit-identical on an AVX512 CPU, a last bit apart on an AVX2-only one, whose
    input product is blocked by length). Steps after a row's end only change outputs after it
    (masked anyway)."""
    if x.device.type != "cpu":
        return lstm(x)[0]
    steps = x.size(1)
    padded = -(-steps // CPU_LSTM_STEPS) * CPU_LSTM_STEPS
    if padded != steps:
        x = torch.nn.functional.pad(x, (0, 0, 0, padded - steps))
    outputs, state = [], None
    for start in range(0, padded, CPU_LSTM_STEPS):
        out, state = lstm(x[:, start : start + CPU_LSTM_STEPS], state)
        outputs.append(out)
    return torch.cat(outputs, dim=1)[:, :steps]


CPU_LSTM_ALONE_ROWS = 3
"""Batches of at most this many rows run the BLSTM on the CPU one row at a time (see
`_blstm_rows_alone`)."""


def _blstm_rows_alone(blstm: torch.nn.LSTM, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The BLSTM of each row alone, over its own steps (zeros past them). oneDNN's LSTM takes one
    row about three times faster than two: measured on 2 cores (AMX), 512 units, bf16, 17 against
    55 us a step for one row against two to four (the same for fp32, and on one thread); batching
    pays from 4-5 rows up. So a batch of 2 rows of 1,494 and 1,300 steps took 116 ms row by row
    against 186 ms batched, 3 rows 165 against 197, 4 rows 148 against 139. A row alone is also
    the computation the clip gets alone, to the bit."""
    forward, backward = _lstm_directions(blstm)
    out = x.new_zeros(x.size(0), x.size(1), 2 * blstm.hidden_size)
    for b, n in enumerate(lens.tolist()):
        if n <= 0:
            continue
        row = x[b : b + 1, :n]
        out[b, :n, : blstm.hidden_size] = _run_lstm(forward, row)[0]
        out[b, :n, blstm.hidden_size :] = _run_lstm(backward, row.flip(1))[0].flip(0)
    return out


def _reverse_within(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first lens[b] steps in place of time; padding stays where it is."""
    steps = torch.arange(x.size(1), device=x.device)[None, :]
    index = torch.where(steps < lens[:, None], lens[:, None] - 1 - steps, steps)
    return x.gather(1, index[..., None].expand(-1, -1, x.size(2)))


def _blstm_within_lengths(
    blstm: torch.nn.LSTM, x: torch.Tensor, lens: torch.Tensor, kernel: str = "auto"
) -> torch.Tensor:
    """A one-layer BLSTM whose backward direction starts at each row's own end.

    Equal on valid steps to running it on a packed sequence, without packing: cuDNN's packed
    path costs tens of milliseconds of host time per call. Values past each row's end are
    meaningless and must be masked by the caller.

    kernel: "fused" runs both directions in one persistent kernel (`asr.engine.lstm`: CUDA, fp16/bf16),
    "cpu-f16" the C kernel of `asr.engine.lstm_cpu` (CPU: fp16 recurrent weights, int8 input
    products; torch's LSTM where it does not run), "cudnn" runs torch's LSTM per direction, "auto" picks the fused
    kernel where it can run.
    """
    if kernel not in LSTM_KERNELS:
        raise ValueError(f"unknown LSTM kernel {kernel!r}; choose one of {LSTM_KERNELS}")
    dtype = blstm.weight_ih_l0.dtype
    if dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    given = x.dtype
    x = x.to(dtype)
    use_fused = kernel != "cudnn" and lstm_kernels.fused_available(x.device, dtype, blstm.hidden_size)
    if kernel == "fused" and not use_fused:
        raise RuntimeError("the fused LSTM kernel needs Triton, a CUDA device with enough SMs and fp16/bf16 weights")
    if kernel == "cpu-f16":
        out = lstm_cpu.blstm(blstm, x, lens, half=True, int8_inputs=True)
        if out is not None:
            return out.to(given)
    if not use_fused and x.device.type == "cpu" and x.size(0) <= CPU_LSTM_ALONE_ROWS:
        return _blstm_rows_alone(blstm, x, lens).to(given)
    x_reversed = _reverse_within(x, lens)
    if use_fused:
        ahead, behind = lstm_kernels.blstm(blstm, x, x_reversed)
    else:
        forward, backward = _lstm_directions(blstm)
        ahead = _run_lstm(forward, x)
        behind = _run_lstm(backward, x_reversed)
    # Back in the caller's dtype (a bf16 BLSTM between fp32 layers: the int8 CPU path).
    return torch.cat([ahead, _reverse_within(behind, lens)], dim=-1).to(given)


def _row_lengths(lens: torch.Tensor, x: torch.Tensor) -> list[int] | None:
    """Each row's valid length where the predictor's token half must run one row at a time: a
    padded batch that must give each clip exactly its result alone, on the CPU. There a row's
    output differs in the last bits with the batch it is in, enough to flip a near-tie token (it
    did, in a server test): oneDNN picks its convolution kernel by batch size (the 32-channel test
    model's), the 1-output linear layers' kernels depend on the row count, vectorised sigmoid
    differs from the scalar one that the tail of a tensor gets, and sums over a padded row group
    their terms by its length.
    One row at a time over its own frames is the computation funasr makes for the clip alone. On
    a GPU the rows stay batched: a launch per row would cost more than the predictor. (The
    timestamp head stays batched too: its BLSTM's last-bit noise can move a peak only where the
    integral sits within ~1e-7 of the threshold.)"""
    if x.device.type != "cpu" or x.shape[0] == 1:
        return None
    return [int(n) for n in lens.tolist()]


def _upsampled_hidden(
    predictor: Any,
    context: torch.Tensor,
    conv_out: torch.Tensor,
    mask: torch.Tensor,
    lens: torch.Tensor | None,
    lstm_kernel: str = "auto",
) -> torch.Tensor:
    source = conv_out if predictor.use_cif1_cnn else context
    up = predictor.upsample_cnn(source).transpose(1, 2)
    if predictor.upsample_type == "cnn_blstm":
        if lens is None:
            up, _ = predictor.blstm(up)
        else:
            up = _blstm_within_lengths(predictor.blstm, up, lens * predictor.upsample_times, lstm_kernel)
    elif predictor.upsample_type == "cnn_attn":
        up, _ = predictor.self_attn(up, mask[:, None, :])
    elif predictor.upsample_type != "cnn":
        raise ValueError(f"unsupported predictor upsample_type {predictor.upsample_type!r}")
    return up


@torch.no_grad()
def predict(
    predictor: Any,
    encoder_out: torch.Tensor,
    encoder_out_lens: torch.Tensor,
    *,
    batch_invariant: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token embeddings, token counts and timestamp peaks from a ``CifPredictorV3``.

    Equals funasr's ``calc_predictor`` (inference branch, with ``tail_process_fn``), the
    ``round().long()`` that ``SeacoParaformer.inference`` applies to the token count, and
    ``calc_predictor_timestamp`` rescaled to that count. Unlike funasr it runs the shared
    convolution once and skips the upsample branch's training-only token count in ``forward``.

    Args:
        predictor: a funasr ``CifPredictorV3`` (its weights are used as they are).
        encoder_out: [B, T, D] encoder output.
        encoder_out_lens: [B] valid frames per item.
        batch_invariant: in a padded batch funasr lets padding reach a clip's result: the
            predictor convolution reads one frame past the end, the tail token takes 0.45 of the
            first padded frame, and the timestamp BLSTM runs backwards through the padding. True
            zeroes padded frames and packs the BLSTM input, so every clip gets what funasr
            computes for it alone (costs one host sync for the packed lengths).

    Returns:
        acoustic_embeds [B, N, D] (N = max token count), token_num [B] int64,
        us_alphas [B, T * upsample_times] float32, us_peaks [B, T * upsample_times] float32.
    """
    acoustic_embeds, token_num, state = predict_tokens(
        predictor, encoder_out, encoder_out_lens, batch_invariant=batch_invariant
    )
    us_alphas, us_peaks = predict_timestamps(predictor, state, token_num)
    return acoustic_embeds, token_num, us_alphas, us_peaks


@dataclass
class TimestampInputs:
    """What the timestamp head needs from the token pass (see `predict_tokens`)."""

    context: torch.Tensor
    conv_out: torch.Tensor
    mask: torch.Tensor
    lens: torch.Tensor | None  # per-row lengths when padding must not reach any row


def _token_weights(
    predictor: Any, context: torch.Tensor, maskf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The predictor's convolution, its CIF weights (with funasr's tail frame) and the token
    counts before rounding, for [B, D, T] frames and their [B, T] float mask."""
    conv_out = torch.relu(predictor.cif_conv1d(predictor.pad(context)))
    logits = predictor.cif_output(conv_out.transpose(1, 2)).squeeze(-1).to(torch.float32)
    alphas = torch.relu(torch.sigmoid(logits) * predictor.smooth_factor - predictor.noise_threshold)
    alphas = alphas * maskf
    if predictor.tail_threshold <= 0.0:
        return conv_out, alphas, alphas.sum(-1)
    # tail_process_fn: an extra frame of weight tail_threshold right after each clip's end.
    ones = maskf.new_ones(maskf.shape[0], 1)
    step_down = torch.cat([ones, maskf], dim=1) - torch.cat([maskf, ones * 0], dim=1)
    alphas = torch.cat([alphas, ones * 0], dim=1) + step_down * predictor.tail_threshold
    return conv_out, alphas, torch.floor(alphas.sum(-1))


@torch.no_grad()
def predict_tokens(
    predictor: Any, encoder_out: torch.Tensor, encoder_out_lens: torch.Tensor, *, batch_invariant: bool = False
) -> tuple[torch.Tensor, torch.Tensor, TimestampInputs]:
    """The token half of `predict`: acoustic embeddings and token counts, plus what
    `predict_timestamps` needs, so the timestamp head can run beside the decoder."""
    batch, frames, _ = encoder_out.shape
    mask = torch.arange(frames, device=encoder_out.device)[None, :] < encoder_out_lens[:, None]
    maskf = mask.to(torch.float32)

    if batch_invariant:
        encoder_out = encoder_out * mask[..., None].to(encoder_out.dtype)
    context = encoder_out.transpose(1, 2)
    rows = _row_lengths(encoder_out_lens, encoder_out) if batch_invariant else None
    if rows is None:
        conv_out, alphas, token_num_f = _token_weights(predictor, context, maskf)
    else:
        # Each row over its own frames, padded back into the batch's shape (zeros past the end,
        # where the batched form has zeros too: masked weights, and no tail frame).
        conv_out = context.new_zeros(batch, predictor.cif_conv1d.out_channels, frames)
        alphas = maskf.new_zeros(batch, frames + (predictor.tail_threshold > 0.0))
        token_num_f = maskf.new_zeros(batch)
        for b, n in enumerate(rows):
            row_conv, row_alphas, row_num = _token_weights(predictor, context[b : b + 1, :, :n], maskf[b : b + 1, :n])
            conv_out[b, :, :n] = row_conv[0]
            alphas[b, : row_alphas.shape[1]] = row_alphas[0]
            token_num_f[b] = row_num[0]
    hidden = encoder_out
    if predictor.tail_threshold > 0.0:
        hidden = torch.cat([hidden, hidden.new_zeros(batch, 1, hidden.size(2))], dim=1)
        out_len = int(token_num_f.max())
    else:
        out_len = int(torch.round(token_num_f).max())
    acoustic_embeds, _ = _cif(hidden, alphas, predictor.threshold, max(out_len, 0))
    token_num = token_num_f.round().long()
    state = TimestampInputs(context, conv_out, mask, encoder_out_lens if batch_invariant else None)
    return acoustic_embeds, token_num, state


@torch.no_grad()
def predict_timestamps(
    predictor: Any, state: TimestampInputs, token_num: torch.Tensor, *, lstm_kernel: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The timestamp half of `predict`: upsampled weights rescaled to `token_num`, and peaks.
    `lstm_kernel` picks the BLSTM's implementation (see `_blstm_within_lengths`)."""
    up = _upsampled_hidden(predictor, state.context, state.conv_out, state.mask, state.lens, lstm_kernel)
    up_logits = predictor.cif_output2(up).squeeze(-1).to(torch.float32)
    us_alphas = torch.relu(torch.sigmoid(up_logits) * predictor.smooth_factor2 - predictor.noise_threshold2)
    us_alphas = us_alphas * state.mask.to(torch.float32).repeat_interleave(predictor.upsample_times, dim=1)
    us_alphas = us_alphas * (token_num / us_alphas.sum(-1))[:, None]
    us_peaks = cif_wo_hidden(us_alphas, predictor.threshold - 1e-4)
    return us_alphas, us_peaks
