"""Batched timestamps must equal funasr's ts_prediction_lfr6_standard item by item."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from funasr.utils.timestamp_tools import ts_prediction_lfr6_standard

from asr.engine.cif import cif_wo_hidden
from asr.engine.timestamps import fire_positions, token_spans


def _case(rng: np.random.Generator, frames: int, n_tokens: int, exact: bool) -> torch.Tensor:
    alphas = rng.uniform(0, 1, frames) * (rng.uniform(0, 1, frames) > 0.4)
    alphas[: rng.integers(0, 20)] = 0  # leading silence
    if rng.uniform() < 0.5:
        alphas[-rng.integers(1, 30):] = 0  # trailing silence
    target = n_tokens + (1 if exact else rng.choice([-1, 0, 2]))
    alphas = alphas / max(alphas.sum(), 1e-9) * target
    return torch.tensor(alphas, dtype=torch.float32)


@pytest.mark.parametrize("seed", range(12))
def test_batch_equals_funasr_per_item(seed: int) -> None:
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(6):
        frames = int(rng.integers(30, 600))
        n_tokens = int(rng.integers(1, max(2, frames // 6)))
        items.append((_case(rng, frames, n_tokens, exact=rng.uniform() < 0.5), n_tokens))
    width = max(len(a) for a, _ in items) + 7  # extra padding: it must not matter
    alphas = torch.zeros(len(items), width)
    for row, (a, _) in enumerate(items):
        alphas[row, : len(a)] = a
    peaks = cif_wo_hidden(alphas, 1.0 - 1e-4)
    frames = torch.tensor([len(a) for a, _ in items])
    n_tokens = torch.tensor([n for _, n in items])
    fires = fire_positions(alphas, peaks, frames, n_tokens)
    for row, (a, n) in enumerate(items):
        chars = [chr(0x4E00 + i) for i in range(n)]
        try:
            _, expected = ts_prediction_lfr6_standard(a.clone(), peaks[row, : len(a)].clone(), chars)
        except IndexError:
            continue  # funasr crashes when the head fires more often than tokens; we cap instead
        assert token_spans(fires[row], len(a), n) == [tuple(x) for x in expected]


def test_no_tokens_no_spans() -> None:
    assert token_spans(np.array([3, 9]), 40, 0) == []
