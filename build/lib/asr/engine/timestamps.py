"""Per-token timestamps from the CIF timestamp head, for a whole batch at once.

Same rules as funasr's `ts_prediction_lfr6_standard` (fire positions shifted by 1.5 frames,
tokens capped at 12 upsampled frames, start/end silence thresholds, 20 ms per upsampled frame),
but the peaks of every item are found in one pass on the device and the rules run in numpy:
funasr re-runs a Python per-frame CIF loop for every clip whose fire count is off, which at high
throughput costs more host time than the whole network.
"""

from __future__ import annotations

import numpy as np
import torch

from asr.engine.cif import cif_wo_hidden

_FIRE = 1.0 - 1e-4
_SHIFT = -1.5  # funasr's force_time_shift, in upsampled frames
_EDGE = 5  # START_END_THRESHOLD: leading/trailing silence longer than this is not a token's
_MAX_TOKEN = 12  # MAX_TOKEN_DURATION in upsampled frames
_FRAME_S = 10.0 * 6 / 1000 / 3  # LFR 6 x 10 ms, upsampled 3 times


def fire_mask(
    us_alphas: torch.Tensor, us_peaks: torch.Tensor, frames: torch.Tensor, n_tokens: torch.Tensor
) -> torch.Tensor:
    """[B, T] bool: where each item's timestamp head fires, re-integrated where it fired a wrong
    number of times. No host sync, so the caller can queue the next batch before reading it.

    us_alphas, us_peaks: [B, T] upsampled weights and integrate-and-fire peaks; frames: [B] valid
    upsampled frames; n_tokens: [B] tokens decoded. Each item must fire n_tokens + 1 times; where
    it does not, its weights are rescaled to sum to n_tokens + 1 and integrated again.
    """
    valid = torch.arange(us_alphas.shape[1], device=us_alphas.device)[None, :] < frames[:, None]
    fires = (us_peaks >= _FIRE) & valid
    wrong = fires.sum(-1) != n_tokens + 1
    # Every row is re-integrated (a few batched ops) and the wrong ones take it: cheaper than a
    # host sync to find out which rows need it.
    alphas = us_alphas * valid
    alphas = alphas / (alphas.sum(-1, keepdim=True) / (n_tokens[:, None] + 1)).clamp_min(1e-12)
    refired = (cif_wo_hidden(alphas, _FIRE) >= _FIRE) & valid
    return torch.where(wrong[:, None], refired, fires)


def fire_positions(
    us_alphas: torch.Tensor, us_peaks: torch.Tensor, frames: torch.Tensor, n_tokens: torch.Tensor
) -> list[np.ndarray]:
    """Fire frame indices per item (see `fire_mask`)."""
    return [np.flatnonzero(row) for row in fire_mask(us_alphas, us_peaks, frames, n_tokens).cpu().numpy()]


def token_spans(fires: np.ndarray, num_frames: int, n_tokens: int) -> list[tuple[int, int]]:
    """[start_ms, end_ms] per token from one item's fire positions (funasr's rules)."""
    if n_tokens == 0 or len(fires) == 0:
        return []
    place = fires.astype(np.float64) + _SHIFT
    count = min(len(place) - 1, n_tokens)
    starts = place[:count]
    ends = place[1 : count + 1].copy()
    long = ends - starts > _MAX_TOKEN
    ends[long] = starts[long] + _MAX_TOKEN
    spans = [[s * _FRAME_S, e * _FRAME_S] for s, e in zip(starts, ends, strict=True)]
    # funasr adjusts the last entry of its list, which is a silence when the last token was capped.
    last_is_token = count > 0 and not long[-1]
    if num_frames - place[-1] > _EDGE:
        if last_is_token:
            spans[-1][1] = (num_frames + place[-1]) * 0.5 * _FRAME_S
    elif last_is_token:
        spans[-1][1] = num_frames * _FRAME_S
    return [(int(s * 1000), int(e * 1000)) for s, e in spans]
