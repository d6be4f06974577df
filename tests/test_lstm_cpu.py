"""The timestamp head's BLSTM as the project's C kernel on the CPU (asr.engine.lstm_cpu)."""

from __future__ import annotations

import logging

import pytest
import torch

from asr.engine import lstm_cpu
from asr.engine.attention import cpu_bf16_native
from asr.engine.cif import _blstm_within_lengths
from asr.engine.core import Engine
from asr.engine.int8 import packed_product_usable
from asr.engine.model import load_model
from asr.settings import EngineSettings

needs_kernel = pytest.mark.skipif(
    not lstm_cpu.available(), reason="the BLSTM kernel needs a C compiler and a CPU with AVX2, FMA and F16C"
)


def _lstm(inputs: int, hidden: int, seed: int) -> torch.nn.LSTM:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.nn.LSTM(inputs, hidden, batch_first=True, bidirectional=True).requires_grad_(False)


def _torch_rows(lstm: torch.nn.LSTM, x: torch.Tensor, lens: torch.Tensor, half: bool) -> list[torch.Tensor]:
    """Each row alone through torch's LSTM, the recurrent weights rounded to fp16 where `half`: the
    values the kernel computes, but for the order of each sum."""
    ref = _lstm(lstm.input_size, lstm.hidden_size, 0)
    ref.load_state_dict(lstm.state_dict())
    if half:
        for name in ("weight_hh_l0", "weight_hh_l0_reverse"):
            getattr(ref, name).copy_(getattr(ref, name).half().float())
    empty = x.new_zeros(0, 2 * lstm.hidden_size)  # torch's LSTM refuses a row without steps
    return [ref(x[b : b + 1, :n])[0][0] if n else empty for b, n in enumerate(lens.tolist())]


@needs_kernel
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16-weights"])
def test_kernel_equals_torch_lstm_row_by_row(half: bool) -> None:
    lstm = _lstm(40, 64, 1)
    gen = torch.Generator().manual_seed(2)
    window = lstm_cpu.WINDOW
    lens = torch.tensor([2 * window + 9, window, window + 1, 1, 0, 57])  # across windows, empty, one step
    x = torch.randn(len(lens), int(lens.max()), 40, generator=gen)
    out = lstm_cpu.blstm(lstm, x, lens, half=half)
    assert out is not None and out.shape == (len(lens), x.size(1), 128)
    for b, (n, ref) in enumerate(zip(lens.tolist(), _torch_rows(lstm, x, lens, half), strict=True)):
        torch.testing.assert_close(out[b, :n], ref, atol=2e-6, rtol=0, msg=f"row {b}")
        assert not out[b, n:].any(), f"row {b} past its end"
    # fp16 recurrent weights move the outputs by ~1e-4, not more.
    if half:
        fp32 = lstm_cpu.blstm(lstm, x, lens, half=False)
        gap = float((out - fp32).abs().max())
        assert 0 < gap < 2e-3


@needs_kernel
def test_each_row_is_the_same_to_the_bit_in_any_batch() -> None:
    """A clip's values depend on nothing but the clip: batch companions and their lengths leave
    them exactly as they are (the server merges segments with whatever else waits)."""
    lstm = _lstm(32, 48, 3)
    gen = torch.Generator().manual_seed(4)
    lens = torch.tensor([300, 181, 128, 5])
    x = torch.randn(len(lens), 300, 32, generator=gen)
    for half, int8_inputs in ((False, False), (True, False), (True, True)):
        batched = lstm_cpu.blstm(lstm, x, lens, half, int8_inputs)
        for b, n in enumerate(lens.tolist()):
            alone = lstm_cpu.blstm(lstm, x[b : b + 1, :n], lens[b : b + 1], half, int8_inputs)
            assert torch.equal(alone[0], batched[b, :n]), (half, int8_inputs, b)


@needs_kernel
def test_the_timestamp_head_takes_the_kernel_where_asked_and_torch_elsewhere() -> None:
    lstm = _lstm(24, 16, 5)
    gen = torch.Generator().manual_seed(6)
    x, lens = torch.randn(3, 50, 24, generator=gen), torch.tensor([50, 31, 7])
    state = torch.get_rng_state()
    got = _blstm_within_lengths(lstm, x, lens, "cpu-f16")
    assert torch.equal(torch.get_rng_state(), state)  # building its int8 layers drew no random numbers
    # The int8 path's choices: fp16 recurrent weights and, where the packed int8 product runs, int8
    # input products (one term, like the encoder's layers: ~2% of the outputs' range).
    assert torch.equal(got, lstm_cpu.blstm(lstm, x, lens, half=True, int8_inputs=True))
    for b, (n, ref) in enumerate(zip(lens.tolist(), _torch_rows(lstm, x, lens, True), strict=True)):
        torch.testing.assert_close(got[b, :n], ref, atol=0.03, rtol=0)
    if packed_product_usable():
        assert not torch.equal(got, lstm_cpu.blstm(lstm, x, lens, half=True))
    # An LSTM the kernel does not take (units not a multiple of 8) runs torch's, fp32 weights.
    odd = _lstm(24, 12, 7)
    assert lstm_cpu.blstm(odd, x, lens, half=True) is None
    fallback = _blstm_within_lengths(odd, x, lens, "cpu-f16")
    for b, (n, ref) in enumerate(zip(lens.tolist(), _torch_rows(odd, x, lens, False), strict=True)):
        torch.testing.assert_close(fallback[b, :n], ref, atol=1e-5, rtol=1e-5)


def test_without_the_kernel_torch_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASR_LSTM_CPU_KERNEL", "0")
    lstm_cpu._kernel.cache_clear()
    try:
        lstm = _lstm(24, 16, 5)
        x, lens = torch.randn(2, 20, 24), torch.tensor([20, 9])
        assert not lstm_cpu.available() and lstm_cpu.blstm(lstm, x, lens) is None
        got = _blstm_within_lengths(lstm, x, lens, "cpu-f16")
        for b, (n, ref) in enumerate(zip(lens.tolist(), _torch_rows(lstm, x, lens, False), strict=True)):
            torch.testing.assert_close(got[b, :n], ref, atol=1e-5, rtol=1e-5)
    finally:
        monkeypatch.delenv("ASR_LSTM_CPU_KERNEL")
        lstm_cpu._kernel.cache_clear()


@needs_kernel
@pytest.mark.skipif(cpu_bf16_native(), reason="with native bf16 the int8 path runs the BLSTM in bf16 through oneDNN")
def test_int8_engine_runs_the_kernel_and_keeps_tokens_and_timestamps(tiny_model_dir, clips, caplog) -> None:
    device = torch.device("cpu")
    settings = EngineSettings(model=str(tiny_model_dir), warmup=False, dtype="int8")
    loaded = load_model(tiny_model_dir, device)
    with caplog.at_level(logging.INFO, logger="asr.engine.core"):
        kernel = Engine(loaded, settings, device)
    assert kernel.lstm_kernel == "cpu-f16" and kernel.info()["timestamp_lstm"] == "cpu-f16"
    assert any("timestamp-lstm=cpu-f16" in r.getMessage() for r in caplog.records)
    torch_lstm = Engine(
        load_model(tiny_model_dir, device), settings.model_copy(update={"lstm_kernel": "cudnn"}), device
    )
    assert torch_lstm.lstm_backend == "torch"
    fp32 = Engine(load_model(tiny_model_dir, device), settings.model_copy(update={"dtype": "fp32"}), device)
    assert fp32.lstm_backend == "torch"  # the reference path keeps funasr's arithmetic
    got, ref = kernel.transcribe(clips), torch_lstm.transcribe(clips)
    assert any(r.timestamps for r in ref)
    for a, b in zip(got, ref, strict=True):
        assert a.token_ids == b.token_ids  # the BLSTM feeds only the timestamps
        assert a.timestamps == b.timestamps
    # The batch gives each clip what it gets alone.
    for clip, a in zip(clips, got, strict=True):
        alone = kernel.transcribe([clip])[0]
        assert (alone.token_ids, alone.timestamps) == (a.token_ids, a.timestamps)
