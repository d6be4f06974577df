"""BatchFrontend against funasr's WavFrontend (kaldi-native-fbank or torchaudio underneath)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

wav_frontend = pytest.importorskip("funasr.frontends.wav_frontend")

from asr.engine.frontend import BatchFrontend, FrontendOptions, load_cmvn  # noqa: E402

# Largest allowed |ours - funasr| on features after CMVN (CMVN scales here are up to 0.5, so the
# log-mel difference this allows is about 2e-3). Two fp32 FFTs differ by rounding only.
FEAT_ATOL = 1e-3
CONF = dict(
    fs=16000, window="hamming", n_mels=80, frame_length=25, frame_shift=10, lfr_m=7, lfr_n=6, dither=0.0
)


def _write_mvn(path: Path, seed: int = 0, dim: int = 560) -> Path:
    rng = np.random.default_rng(seed)
    shift = -rng.uniform(5.0, 15.0, dim)
    scale = rng.uniform(0.1, 0.5, dim)

    def vec(a: np.ndarray) -> str:
        return "[ " + " ".join(f"{x:.6f}" for x in a) + " ]"

    path.write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n<AddShift> {dim} {dim}\n<LearnRateCoef> 0 "
        f"{vec(shift)}\n<Rescale> {dim} {dim}\n<LearnRateCoef> 0 {vec(scale)}\n</Nnet>\n"
    )
    return path


@pytest.fixture(scope="module")
def mvn_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_mvn(tmp_path_factory.mktemp("mvn") / "am.mvn")


@pytest.fixture(scope="module")
def frontends(mvn_path: Path) -> tuple[torch.nn.Module, BatchFrontend]:
    ref = wav_frontend.WavFrontend(cmvn_file=str(mvn_path), **CONF)
    return ref, BatchFrontend.from_model_dir(CONF, mvn_path)


def _batch(signals: list[np.ndarray], pad_value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in signals])
    waves = torch.full((len(signals), int(lengths.max())), pad_value, dtype=torch.float32)
    for i, s in enumerate(signals):
        waves[i, : len(s)] = torch.from_numpy(s.astype(np.float32))
    return waves, lengths


def _signals(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        t = np.arange(n) / 16000
        if i % 3 == 0:
            out.append(rng.uniform(-1, 1, n) * rng.uniform(0.01, 1.0))
        elif i % 3 == 1:
            out.append(0.5 * np.sin(2 * np.pi * rng.uniform(60, 7900) * t))
        else:  # speech-like: a few harmonics under an envelope, plus a little noise
            f0 = rng.uniform(90, 250)
            s = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
            out.append(0.2 * s * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)) + 1e-3 * rng.standard_normal(n))
    return out


def test_load_cmvn_matches_funasr(mvn_path: Path) -> None:
    np.testing.assert_array_equal(load_cmvn(mvn_path), wav_frontend.load_cmvn(str(mvn_path)).numpy())


@pytest.mark.parametrize("seed", range(4))
def test_batch_matches_wav_frontend(frontends, seed: int) -> None:
    ref, ours = frontends
    rng = np.random.default_rng(100 + seed)
    lengths = [int(x) for x in rng.integers(400, 16000 * 4, 5)] + [400, 560 + 6 * 160 * seed]
    waves, lens = _batch(_signals(seed, lengths))
    ref_feats, ref_lens = ref(waves, lens)
    feats, feat_lens = ours(waves, lens)
    assert feat_lens.tolist() == ref_lens.tolist()
    assert feats.shape == ref_feats.shape and feats.dtype == torch.float32
    assert (feats - ref_feats).abs().max() < FEAT_ATOL


def test_every_lfr_remainder_matches(frontends) -> None:
    # Clips of 1..25 fbank frames cover every LFR tail case (rows needing right padding).
    ref, ours = frontends
    lengths = [400 + 160 * (n - 1) + n % 3 for n in range(1, 26)]
    waves, lens = _batch(_signals(7, lengths))
    ref_feats, ref_lens = ref(waves, lens)
    feats, feat_lens = ours(waves, lens)
    assert feat_lens.tolist() == ref_lens.tolist()
    assert (feats - ref_feats).abs().max() < FEAT_ATOL


def test_raw_log_mel_matches_kaldi_native_fbank() -> None:
    knf = pytest.importorskip("kaldi_native_fbank")
    for window in ("hamming", "povey"):
        opts = knf.FbankOptions()
        opts.frame_opts.dither = 0.0
        opts.frame_opts.window_type = window
        opts.mel_opts.num_bins = 80
        opts.energy_floor = 0.0
        ours = BatchFrontend(FrontendOptions(window=window))
        for signal in _signals(3, [16000, 12345, 3000]):
            fb = knf.OnlineFbank(opts)
            fb.accept_waveform(16000, (signal * 32768).astype(np.float32).tolist())
            fb.input_finished()
            ref = np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])
            got = ours.fbank(torch.from_numpy(signal.astype(np.float32))[None])[0].numpy()
            assert got.shape == ref.shape
            # A pure tone under the povey window leaves far bands near the fp32 rounding floor,
            # where both fp32 FFTs are noise (each differs from a float64 FFT by up to ~0.3).
            # Compare bands within 18 nepers (78 dB) of each frame's loudest band.
            audible = ref > ref.max(axis=1, keepdims=True) - 18.0
            assert audible.mean() > 0.2
            assert np.abs(got - ref)[audible].max() < 2e-3, window


def test_silence_hits_the_log_floor(frontends) -> None:
    ref, ours = frontends
    waves, lens = _batch([np.zeros(4000), np.zeros(1000)])
    ref_feats, _ = ref(waves, lens)
    feats, _ = ours(waves, lens)
    assert (feats - ref_feats).abs().max() < FEAT_ATOL


def test_padding_never_changes_a_clip(frontends) -> None:
    _, ours = frontends
    signals = _signals(11, [16000 * 3, 7777, 401])
    alone = [ours(*_batch([s]))[0][0] for s in signals]
    # Loud noise after each clip's end must not reach its frames or its LFR tail.
    waves, lens = _batch(signals, pad_value=0.9)
    waves[:, :] += 0.0
    for i, n in enumerate(lens.tolist()):
        waves[i, n:] = torch.rand(waves.size(1) - n) * 2 - 1
    feats, feat_lens = ours(waves, lens)
    for i, ref in enumerate(alone):
        n = int(feat_lens[i])
        assert n == ref.size(0)
        torch.testing.assert_close(feats[i, :n], ref, atol=1e-5, rtol=0)
        assert not feats[i, n:].any()


def test_clip_shorter_than_a_frame_gets_no_features(frontends) -> None:
    _, ours = frontends
    feats, feat_lens = ours(*_batch([np.zeros(399), np.full(800, 0.1)]))
    assert feat_lens.tolist() == [0, 1]
    assert not feats[0].any()
    feats, feat_lens = ours(*_batch([np.zeros(100)]))
    assert feats.shape == (1, 0, 560) and feat_lens.tolist() == [0]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="dither"):
        FrontendOptions(dither=1.0)
    with pytest.raises(ValueError, match="window"):
        FrontendOptions(window="gauss")
    assert FrontendOptions.from_conf({**CONF, "cmvn_file": "x"}).lfr_m == 7
    with pytest.raises(ValueError, match="cmvn"):
        BatchFrontend(FrontendOptions(lfr_m=7, lfr_n=6), np.zeros((2, 80)))


def test_num_frames_predicts_output_lengths(frontends) -> None:
    _, ours = frontends
    lens = torch.tensor([0, 399, 400, 559, 560, 1200, 1360, 16000, 160000])
    assert ours.num_frames(lens).tolist() == [0, 0, 1, 1, 1, 1, 2, 17, 167]
