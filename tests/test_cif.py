"""Parity of the vectorised CIF with funasr's frame loop."""

from __future__ import annotations

import pytest
import torch

funasr_bicif = pytest.importorskip("funasr.models.bicif_paraformer.cif_predictor")
funasr_para = pytest.importorskip("funasr.models.paraformer.cif_predictor")
from funasr.models.transformer.utils.nets_utils import make_pad_mask  # noqa: E402

from asr.engine.cif import cif, cif_wo_hidden, predict  # noqa: E402

ATOL = 1e-5


def _padded_alphas(gen: torch.Generator, batch: int, frames: int, scale: float) -> torch.Tensor:
    alphas = torch.rand(batch, frames, generator=gen) * scale
    lens = torch.randint(1, frames + 1, (batch,), generator=gen)
    lens[0] = frames
    return alphas * (torch.arange(frames)[None, :] < lens[:, None])


def _assert_cif_equal(hidden: torch.Tensor, alphas: torch.Tensor, threshold: float = 1.0) -> None:
    ref_embeds, ref_fires = funasr_bicif.cif(hidden, alphas, threshold)
    embeds, fires = cif(hidden, alphas, threshold)
    assert embeds.shape == ref_embeds.shape
    torch.testing.assert_close(embeds, ref_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(fires, ref_fires, atol=ATOL, rtol=0)
    assert torch.equal(fires >= threshold, ref_fires >= threshold)


def _assert_peaks_equal(alphas: torch.Tensor, threshold: float) -> None:
    ref = funasr_para.cif_wo_hidden(alphas, threshold)
    got = cif_wo_hidden(alphas, threshold)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert torch.equal(got >= threshold, ref >= threshold)


@pytest.mark.parametrize("seed", range(40))
def test_random_batches_match_funasr(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 7, (1,), generator=gen))
    frames = int(torch.randint(1, 400, (1,), generator=gen))
    scale = float(torch.rand(1, generator=gen)) * 1.0
    alphas = _padded_alphas(gen, batch, frames, scale)
    hidden = torch.randn(batch, frames, 24, generator=gen)
    _assert_cif_equal(hidden, alphas)
    _assert_peaks_equal(alphas, 1.0 - 1e-4)
    _assert_peaks_equal(alphas, 1.0)


def _exact_peaks(alphas: torch.Tensor, threshold: float) -> torch.Tensor:
    """funasr's loop in float64: the reference that both fp32 results approximate."""
    thr = float(torch.tensor(threshold, dtype=torch.float32))
    integrate = torch.zeros(alphas.size(0), dtype=torch.float64)
    out = []
    for t in range(alphas.size(1)):
        integrate = integrate + alphas[:, t].double()
        out.append(integrate)
        integrate = torch.where(integrate >= thr, integrate - thr, integrate)
    return torch.stack(out, 1)


def test_long_sequences_match_funasr() -> None:
    # 30 s of upsampled timestamp frames. funasr's fp32 running sum drifts (about 2e-6 here), which
    # reaches token embeddings as ~1e-5; fire positions still agree, and ours track float64.
    gen = torch.Generator().manual_seed(123)
    alphas = torch.rand(8, 1500, generator=gen) * 0.4
    threshold = 1.0 - 1e-4
    ref = funasr_para.cif_wo_hidden(alphas, threshold)
    got = cif_wo_hidden(alphas, threshold)
    exact = _exact_peaks(alphas, threshold)
    assert torch.equal(got >= threshold, ref >= threshold)
    torch.testing.assert_close(got, ref, atol=5e-6, rtol=0)
    assert (got.double() - exact).abs().max() < 1e-7 < (ref.double() - exact).abs().max()

    hidden = torch.randn(8, 1500, 8, generator=gen)
    ref_embeds, ref_fires = funasr_bicif.cif(hidden, alphas, 1.0)
    embeds, fires = cif(hidden, alphas, 1.0)
    assert torch.equal(fires >= 1.0, ref_fires >= 1.0)
    torch.testing.assert_close(embeds, ref_embeds, atol=3e-5, rtol=0)


def test_all_zero_alphas_give_no_tokens() -> None:
    hidden = torch.randn(3, 17, 8)
    alphas = torch.zeros(3, 17)
    embeds, fires = cif(hidden, alphas, 1.0)
    assert embeds.shape == (3, 0, 8)
    assert not (fires >= 1.0).any()
    _assert_cif_equal(hidden, alphas)
    _assert_peaks_equal(alphas, 1.0 - 1e-4)


@pytest.mark.parametrize("value", [0.5, 0.25, 0.125, 1.0, 0.1, 0.2, 1.0 / 3.0])
def test_alphas_summing_to_integers(value: float) -> None:
    frames = 30
    alphas = torch.full((2, frames), value)
    alphas[1, 20:] = 0.0
    hidden = torch.randn(2, frames, 8, generator=torch.Generator().manual_seed(1))
    _assert_cif_equal(hidden, alphas)
    _assert_peaks_equal(alphas, 1.0 - 1e-4)
    _assert_peaks_equal(alphas, 1.0)


def test_exact_binary_fractions_fire_on_the_boundary() -> None:
    alphas = torch.full((1, 8), 0.25)
    embeds, fires = cif(torch.ones(1, 8, 4), alphas, 1.0)
    assert (fires >= 1.0).nonzero()[:, 1].tolist() == [3, 7]
    torch.testing.assert_close(embeds, torch.ones(1, 2, 4))


def test_single_frame() -> None:
    hidden = torch.randn(4, 1, 8)
    alphas = torch.tensor([[0.0], [0.3], [0.99995], [1.0]])
    _assert_cif_equal(hidden, alphas)
    _assert_peaks_equal(alphas, 1.0 - 1e-4)


def test_weights_above_threshold_fire_on_consecutive_frames() -> None:
    # One frame carrying more than a whole token makes funasr fire on the following frames too.
    alphas = torch.tensor([[1.7, 0.1, 0.0, 0.9, 0.6, 0.0]])
    hidden = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(2))
    _assert_peaks_equal(alphas, 1.0 - 1e-4)
    embeds, fires = cif(hidden, alphas, 1.0)
    ref_embeds, ref_fires = funasr_bicif.cif(hidden, alphas, 1.0)
    torch.testing.assert_close(fires, ref_fires, atol=ATOL, rtol=0)
    torch.testing.assert_close(embeds, ref_embeds, atol=ATOL, rtol=0)


def test_other_thresholds() -> None:
    gen = torch.Generator().manual_seed(5)
    alphas = torch.rand(3, 90, generator=gen) * 0.5
    hidden = torch.randn(3, 90, 8, generator=gen)
    _assert_peaks_equal(alphas, 0.8)
    _assert_peaks_equal(alphas, 1.3)
    _assert_cif_equal(hidden, alphas, 1.3)


def test_reduced_precision_inputs_accumulate_in_fp32() -> None:
    gen = torch.Generator().manual_seed(9)
    alphas = torch.rand(2, 50, generator=gen)
    hidden = torch.randn(2, 50, 8, generator=gen)
    ref_embeds, _ = funasr_bicif.cif(hidden.bfloat16().float(), alphas, 1.0)
    embeds, _ = cif(hidden.bfloat16(), alphas, 1.0)
    assert embeds.dtype == torch.bfloat16
    torch.testing.assert_close(embeds.float(), ref_embeds, atol=0.05, rtol=0.01)


def _predictor(seed: int, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    conf = dict(
        idim=32,
        l_order=1,
        r_order=1,
        threshold=1.0,
        tail_threshold=0.45,
        smooth_factor2=0.25,
        noise_threshold2=0.01,
        upsample_times=3,
        use_cif1_cnn=False,
        upsample_type="cnn_blstm",
    )
    conf.update(overrides)
    predictor = funasr_bicif.CifPredictorV3(**conf)
    # Random weights put every alpha near 0.5; a bias spreads them so tokens have varied lengths.
    with torch.no_grad():
        predictor.cif_output.bias.fill_(-0.5)
    return predictor.eval()


def _funasr_predict(predictor, encoder_out, lens):
    mask = (~make_pad_mask(lens, maxlen=encoder_out.size(1))[:, None, :]).to(encoder_out.device)
    embeds, token_num, _, _, _ = predictor(encoder_out, None, mask, ignore_id=-1)
    token_num = token_num.round().long()
    _, _, us_alphas, us_peaks = predictor.get_upsample_timestamp(encoder_out, mask, token_num)
    return embeds, token_num, us_alphas, us_peaks


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "overrides", [{}, {"use_cif1_cnn": True}, {"upsample_type": "cnn"}, {"tail_threshold": 0.0}]
)
def test_predict_matches_funasr(seed: int, overrides: dict) -> None:
    predictor = _predictor(seed, **overrides)
    gen = torch.Generator().manual_seed(100 + seed)
    batch, frames = 4, int(torch.randint(5, 60, (1,), generator=gen))
    lens = torch.randint(1, frames + 1, (batch,), generator=gen)
    lens[seed % batch] = frames
    encoder_out = torch.randn(batch, frames, 32, generator=gen)
    with torch.no_grad():
        ref = _funasr_predict(predictor, encoder_out, lens)
    got = predict(predictor, encoder_out, lens)
    for name, a, b in zip(("embeds", "token_num", "us_alphas", "us_peaks"), got, ref, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=name)
    assert torch.equal(got[3] >= 1.0 - 1e-4, ref[3] >= 1.0 - 1e-4)


def test_predict_batch_invariant_matches_clip_alone() -> None:
    predictor = _predictor(0)
    gen = torch.Generator().manual_seed(7)
    encoder_out = torch.randn(2, 40, 32, generator=gen)
    funasr_differs = 0
    for length in (6, 13, 22, 31, 39):
        lens = torch.tensor([40, length])
        alone = predict(predictor, encoder_out[1:, :length], lens[1:])
        batched = predict(predictor, encoder_out, lens, batch_invariant=True)
        n, up = int(alone[1][0]), 3 * length
        assert int(batched[1][1]) == n
        torch.testing.assert_close(batched[0][1, :n], alone[0][0, :n], atol=ATOL, rtol=0)
        torch.testing.assert_close(batched[2][1, :up], alone[2][0], atol=ATOL, rtol=0)
        torch.testing.assert_close(batched[3][1, :up], alone[3][0], atol=ATOL, rtol=0)
        # The longest clip is unaffected by the flag.
        plain = predict(predictor, encoder_out, lens)
        for a, b in zip(plain, batched, strict=True):
            torch.testing.assert_close(a[0], b[0], atol=ATOL, rtol=0)
        funasr_differs += not torch.allclose(plain[2][1, :up], alone[2][0], atol=1e-3)
    # Without the flag (funasr's behaviour) padding leaks into the shorter clip.
    assert funasr_differs > 0


def test_predict_batch_invariant_is_exact_for_every_row() -> None:
    """The token half bit for bit, not within a tolerance: the server merges a recording's segments with whatever
    else is waiting, and a last-bit difference flipped a near-tie token of the test model when a
    segment ran in a batch of 11 instead of 2 (oneDNN picks its convolution kernel by batch size)."""
    predictor = _predictor(0)
    gen = torch.Generator().manual_seed(11)
    lens = torch.tensor([220, 217, 160, 95, 40])
    encoder_out = torch.randn(len(lens), 220, 32, generator=gen)
    batched = predict(predictor, encoder_out, lens, batch_invariant=True)
    for row, length in enumerate(lens.tolist()):
        alone = predict(predictor, encoder_out[row : row + 1, :length], lens[row : row + 1], batch_invariant=True)
        n, up = int(alone[1][0]), 3 * length
        assert int(batched[1][row]) == n
        assert torch.equal(batched[0][row, :n], alone[0][0, :n])
        # The timestamp head's BLSTM runs batched: its weights agree to float noise, its peaks exactly.
        torch.testing.assert_close(batched[2][row, :up], alone[2][0], atol=1e-6, rtol=0)
        assert torch.equal(batched[3][row, :up] >= 1.0 - 1e-4, alone[3][0] >= 1.0 - 1e-4)
