"""Silero VAD's network in PyTorch (asr/pipeline/silero_torch.py), the GPU path of the VAD:
the same decisions as onnxruntime's, for a recording's lanes and for many live streams."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from speech import SENTENCES, recording, require_espeak

from asr.errors import ModelLoadError
from asr.pipeline.vad import LiveSegmenter, SileroVad, VadOptions, load_vad

SR = 16000
RAW = VadOptions(min_segment_s=0, merge_gap_s=0, speech_pad_ms=0, min_silence_ms=300)
LIVE = VadOptions(max_segment_s=15.0, min_segment_s=0.0, merge_gap_s=0.0, min_silence_ms=300)
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the VAD's device path)")


@pytest.fixture(scope="module")
def rec():
    require_espeak()
    return recording(SENTENCES, [1.5, 0.8, 2.5, 1.2], noise=0.002)


@pytest.fixture(scope="module")
def onnx():
    return SileroVad()


def _probs(vad: SileroVad, audio: np.ndarray) -> np.ndarray:
    return vad.frame_probs(audio[:0], audio)


def test_lane_probabilities_match_onnxruntime(rec, onnx):
    # Louder, quieter and reversed speech, so probabilities cross the thresholds many times.
    audio = np.concatenate((rec.audio, 0.3 * rec.audio, rec.audio[::-1].copy()))
    net = SileroVad(lanes=64, device="cpu")
    expected, got = _probs(onnx, audio), _probs(net, audio)
    assert got.shape == expected.shape == (-(-len(audio) // 512),)
    assert np.abs(got - expected).max() < 1e-4
    assert expected.min() < 0.1 and expected.max() > 0.9  # speech and silence both present
    assert net.segment(audio, RAW) == onnx.segment(audio, RAW)


def test_blocks_on_several_threads_equal_one(rec):
    opts = dataclasses.replace(RAW)
    one = SileroVad(lanes=2, lane_s=2.0, device="cpu")
    three = SileroVad(lanes=2, lane_s=2.0, workers=3, device="cpu")
    pieces = [rec.audio[i : i + 37000] for i in range(0, len(rec.audio), 37000)]
    a = [c.segment for c in one.stream(iter(pieces), opts)]
    b = [c.segment for c in three.stream(iter(pieces), opts)]
    assert a == b and len(a) == len(rec.spans)


def _live(vad: SileroVad, audios: list[np.ndarray], steps: list[int]) -> list[list]:
    """Streams fed together, each in its own message size (so one call decides a different
    number of frames for each, sometimes none); their segments."""
    segs = [LiveSegmenter(vad.open_live(LIVE), LIVE) for _ in audios]
    out: list[list] = [[] for _ in audios]
    pos = [0] * len(audios)
    while any(p < len(a) for p, a in zip(pos, audios)):
        for i, (s, a) in enumerate(zip(segs, audios)):
            s.append(a[pos[i] : pos[i] + steps[i]])
            pos[i] += steps[i]
        vad.decide_streams([s.regions for s in segs])
        for o, s in zip(out, segs):
            o += s.advance()
    for o, s in zip(out, segs):
        o += s.finish()
    return [[c.segment for c in o] for o in out]


def test_live_streams_match_onnxruntime(rec, onnx):
    audios = [rec.audio, rec.audio[3 * SR :].copy(), np.zeros(8 * SR, np.float32), 0.5 * rec.audio]
    steps = [960, 1600, 320, 4000]  # 60 ms, 100 ms, 20 ms (a frame every other call), 250 ms
    expected = _live(onnx, audios, steps)
    got = _live(SileroVad(lanes=1, device="cpu"), audios, steps)
    assert got == expected
    assert len(expected[0]) == len(rec.spans) and expected[2] == []


def test_the_state_carried_between_calls_is_onnxruntimes(rec, onnx):
    net = SileroVad(lanes=1, device="cpu")
    a, b = onnx.open_live(LIVE), net.open_live(LIVE)
    for i in range(0, 6 * SR, 1500):
        a.append(rec.audio[i : i + 1500])
        b.append(rec.audio[i : i + 1500])
        onnx.decide_streams([a])
        net.decide_streams([b])
        assert a.done == b.done
        np.testing.assert_allclose(b.state, a.state, atol=1e-3)


def test_vad_device_setting():
    from asr.pipeline.models import StageModels
    from asr.settings import LongformSettings

    def device(value: str) -> str | None:
        return StageModels(LongformSettings(vad_device=value), "/nonexistent").silero_device()

    assert device("cpu") is None  # onnxruntime
    assert device("cuda:1") == "cuda:1"
    assert device("auto") == ("cuda" if torch.cuda.is_available() else None)
    assert load_vad("silero", device=None)._torch is None


def test_a_broken_weights_file_is_a_load_error(tmp_path, monkeypatch):
    from asr.pipeline import silero_torch

    bad = tmp_path / "silero_vad.jit"
    bad.write_bytes(b"not a model")
    monkeypatch.setattr(silero_torch, "weights_path", lambda: bad)
    with pytest.raises(ModelLoadError, match="Silero VAD could not be loaded"):
        SileroVad(device="cpu")


@GPU
def test_gpu_decisions_match_onnxruntime(rec, onnx):
    audio = np.concatenate((rec.audio, 0.3 * rec.audio, rec.audio[::-1].copy()))
    gpu = load_vad("silero", workers=4, device="cuda")
    # cuDNN may use TF32: agreement to ~1e-3, segment edges within a frame.
    assert np.abs(_probs(gpu, audio) - _probs(onnx, audio)).max() < 5e-3
    a, b = gpu.segment(audio, RAW), onnx.segment(audio, RAW)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x.start_sample - y.start_sample) <= 512 and abs(x.end_sample - y.end_sample) <= 512
    audios = [rec.audio, rec.audio[3 * SR :].copy(), np.zeros(8 * SR, np.float32)]
    live = _live(SileroVad(lanes=1, device="cuda"), audios, [960, 1600, 320])
    assert [len(s) for s in live] == [len(s) for s in _live(onnx, audios, [960, 1600, 320])]


def test_a_wrong_vad_device_is_a_settings_error():
    from asr.errors import ConfigError
    from asr.settings import load_settings

    with pytest.raises(ConfigError, match="vad_device"):
        load_settings(longform={"vad_device": "gpu"})
    assert load_settings(longform={"vad_device": "cuda:1"}).longform.vad_device == "cuda:1"


def test_stream_windows_are_each_frame_with_its_context() -> None:
    from asr.pipeline.vad import _stream_windows

    rng = np.random.default_rng(4)
    streams = [SileroVad().open_live(VadOptions()) for _ in range(5)]
    for i, s in enumerate(streams):
        s.context = rng.normal(0, 0.1, 64).astype(np.float32)
        s.append(rng.normal(0, 0.1, 512 * (i + 1) + int(rng.integers(0, 511))).astype(np.float32))
    counts = [s.ready for s in streams]
    want = [np.concatenate((s.context, s.todo))[j * 512 : j * 512 + 576] for s, n in zip(streams, counts)
            for j in range(n)]
    assert np.array_equal(_stream_windows(streams, counts), np.stack(want))
