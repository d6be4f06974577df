"""The timestamp head's BLSTM: the fused persistent kernel against torch's LSTM."""

from __future__ import annotations

import logging

import pytest
import torch

from asr.engine import lstm as lstm_kernels
from asr.engine import lstm_cpu
from asr.engine.attention import cpu_bf16_native
from asr.engine.cif import CPU_LSTM_ALONE_ROWS, CPU_LSTM_STEPS, _blstm_within_lengths, _lstm_directions, _run_lstm
from asr.engine.core import Engine
from asr.engine.model import load_model
from asr.settings import EngineSettings

needs_kernel = pytest.mark.skipif(
    not lstm_kernels.fused_available(torch.device("cuda"), torch.bfloat16),
    reason="the fused LSTM kernel needs a CUDA GPU and Triton",
)


def _reference(lstm: torch.nn.LSTM, x: torch.Tensor, lens: torch.Tensor) -> list[torch.Tensor]:
    """Each row alone through torch's fp32 LSTM (what a packed sequence computes)."""
    lstm = lstm.float()
    with torch.no_grad():
        return [lstm(x[b : b + 1, : int(n)].float())[0][0] for b, n in enumerate(lens)]


def _random_lengths(batch: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    lens = torch.randint(1, steps + 1, (batch,), generator=gen)
    lens[0] = steps  # the longest row sets the padded length
    return lens


def test_cpu_engine_uses_torch_lstm_and_says_so(tiny_model_dir, caplog) -> None:
    device = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="asr.engine.core"):
        engine = Engine(
            load_model(tiny_model_dir, device), EngineSettings(model=str(tiny_model_dir), warmup=False), device
        )
    # torch's own LSTM runs; there is no cuDNN on a CPU, so neither the log nor the UI says cudnn.
    assert engine.lstm_kernel != "fused"
    # (in bf16 on the int8 path, the CPU default, where the CPU multiplies bf16 natively; elsewhere
    # on that path the project's C kernel, tests/test_lstm_cpu.py)
    if engine.quantized and not cpu_bf16_native() and lstm_cpu.available():
        expected = "cpu-f16"
    else:
        expected = "torch-bf16" if cpu_bf16_native() and engine.quantized else "torch"
    assert engine.info()["timestamp_lstm"] == expected
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("engine: "))
    assert f"timestamp-lstm={expected}" in line and "cudnn" not in line


def test_fused_kernel_is_refused_where_it_cannot_run(tiny_model_dir) -> None:
    device = torch.device("cpu")
    settings = EngineSettings(model=str(tiny_model_dir), warmup=False, lstm_kernel="fused")
    with pytest.raises(ValueError, match="fused"):
        Engine(load_model(tiny_model_dir, device), settings, device)
    lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
    x, lens = torch.randn(2, 5, 8), torch.tensor([5, 3])
    with pytest.raises(RuntimeError, match="fused"):
        _blstm_within_lengths(lstm, x, lens, "fused")
    with pytest.raises(ValueError, match="unknown LSTM kernel"):
        _blstm_within_lengths(lstm, x, lens, "persistent")


def test_torch_path_equals_each_row_alone() -> None:
    """The unpacked two-direction path (CPU here) equals packed sequences on valid steps."""
    gen = torch.Generator().manual_seed(3)
    lstm = torch.nn.LSTM(12, 16, batch_first=True, bidirectional=True)
    x = torch.randn(5, 9, 12, generator=gen)
    lens = _random_lengths(5, 9, gen)
    out = _blstm_within_lengths(lstm, x, lens, "cudnn")
    for b, ref in enumerate(_reference(lstm, x, lens)):
        torch.testing.assert_close(out[b, : int(lens[b])], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_windows_are_one_call_exactly_and_few_shapes(dtype) -> None:
    """On the CPU the LSTM runs in fixed windows (oneDNN keeps a primitive per input shape): the
    outputs equal one call over the whole length to float rounding, and the LSTM sees one length
    whatever lengths come, where one call per batch length made a new shape every time. (They were
    bit-identical on an AVX512 CPU; on an AVX2-only one the input product's blocking depends on
    the length, so the last bits differ: a bf16 ulp here and there.)"""
    gen = torch.Generator().manual_seed(5)
    lstm = torch.nn.LSTM(16, 24, batch_first=True).to(dtype).requires_grad_(False)
    seen: set[tuple[int, ...]] = set()
    lstm.register_forward_pre_hook(lambda _, args: seen.add(tuple(args[0].shape[1:2])))
    for steps in (1, CPU_LSTM_STEPS - 1, CPU_LSTM_STEPS, 2 * CPU_LSTM_STEPS + 37, 1500):
        x = torch.randn(3, steps, 16, generator=gen).to(dtype)
        whole = lstm(x)[0]
        got = _run_lstm(lstm, x)
        assert got.shape == whole.shape, steps
        tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1.6e-2}
        torch.testing.assert_close(got, whole, **tolerance, msg=f"{steps} steps")
    assert seen == {(CPU_LSTM_STEPS,), (1,), (CPU_LSTM_STEPS - 1,), (2 * CPU_LSTM_STEPS + 37,), (1500,)}
    seen.clear()
    for steps in range(100, 1600, 97):
        _run_lstm(lstm, torch.randn(3, steps, 16, generator=gen).to(dtype))
    assert seen == {(CPU_LSTM_STEPS,)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_cpu_batches_run_each_row_alone_to_the_bit(dtype) -> None:
    """Up to CPU_LSTM_ALONE_ROWS rows the BLSTM runs row by row (oneDNN's LSTM is about three times
    faster a step on one row than on two): each row's output is then exactly its output alone, an
    empty row gives zeros, and the LSTM never sees more than one row."""
    gen = torch.Generator().manual_seed(6)
    lstm = torch.nn.LSTM(12, 16, batch_first=True, bidirectional=True).to(dtype).requires_grad_(False)
    rows_seen: set[int] = set()
    for half in _lstm_directions(lstm):
        half.register_forward_pre_hook(lambda _, args: rows_seen.add(args[0].size(0)))
    steps = CPU_LSTM_STEPS + 29
    x = torch.randn(CPU_LSTM_ALONE_ROWS, steps, 12, generator=gen).to(dtype)
    lens = torch.tensor([steps, 40, 0][:CPU_LSTM_ALONE_ROWS])
    with torch.inference_mode():
        out = _blstm_within_lengths(lstm, x, lens, "cudnn")
        for b, n in enumerate(lens.tolist()):
            alone = _blstm_within_lengths(lstm, x[b : b + 1, :n], lens[b : b + 1], "cudnn")
            assert torch.equal(out[b, :n], alone[0]), b
        assert not out[1, 40:].any() and not out[2].any()
        torch.testing.assert_close(out.float()[0], _reference(lstm, x, lens[:1])[0],
                                   **({"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else
                                      {"atol": 3e-2, "rtol": 3e-2}))
    assert rows_seen == {1}


def test_windows_keep_each_row_alone_past_the_first_window() -> None:
    gen = torch.Generator().manual_seed(4)
    lstm = torch.nn.LSTM(12, 16, batch_first=True, bidirectional=True)
    steps = 2 * CPU_LSTM_STEPS + 41
    x = torch.randn(4, steps, 12, generator=gen)
    lens = torch.tensor([steps, CPU_LSTM_STEPS + 3, CPU_LSTM_STEPS, 17])
    with torch.no_grad():
        out = _blstm_within_lengths(lstm, x, lens, "cudnn")
    for b, ref in enumerate(_reference(lstm, x, lens)):
        torch.testing.assert_close(out[b, : int(lens[b])], ref, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("hidden", "batch", "steps"),
    [(512, 1, 500), (512, 3, 37), (512, 40, 300), (512, 100, 64), (512, 600, 150), (32, 7, 50), (256, 20, 1)],
)
def test_fused_kernel_matches_torch_lstm(dtype, hidden, batch, steps) -> None:
    """600 rows make ten row blocks per direction: more programs than an H100 has SMs."""
    gen = torch.Generator().manual_seed(hidden * 1000 + batch + steps)
    lstm = torch.nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for p in lstm.parameters():  # trained-like scale: gates neither saturated nor flat
            p.copy_(torch.randn(p.shape, generator=gen) * hidden**-0.5)
    x = torch.randn(batch, steps, hidden, generator=gen)
    lens = _random_lengths(batch, steps, gen)
    ref = _reference(lstm, x, lens)
    cuda = lstm.to("cuda", dtype)
    out = _blstm_within_lengths(cuda, x.to("cuda"), lens.to("cuda"), "fused").float().cpu()
    assert out.shape == (batch, steps, 2 * hidden)
    for b, want in enumerate(ref):
        got = out[b, : int(lens[b])]
        assert torch.isfinite(got).all()
        err = (got - want).norm() / want.norm()
        assert err < 2e-2, f"row {b} (length {int(lens[b])}): relative error {err:.3g}"


@needs_kernel
def test_fused_kernel_agrees_with_cudnn_in_the_same_precision() -> None:
    gen = torch.Generator().manual_seed(11)
    lstm = torch.nn.LSTM(512, 512, batch_first=True, bidirectional=True).to("cuda", torch.bfloat16)
    x = torch.randn(24, 200, 512, generator=gen).to("cuda", torch.bfloat16)
    lens = _random_lengths(24, 200, gen).to("cuda")
    fused = _blstm_within_lengths(lstm, x, lens, "fused").float()
    cudnn = _blstm_within_lengths(lstm, x, lens, "cudnn").float()
    valid = (torch.arange(200, device="cuda")[None, :] < lens[:, None])[..., None]
    diff = ((fused - cudnn) * valid).norm() / (cudnn * valid).norm()
    assert diff < 1e-2


@needs_kernel
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_engine_with_fused_kernel_keeps_tokens_and_timestamps(tiny_model_dir, clips, dtype) -> None:
    device = torch.device("cuda")
    loaded = load_model(tiny_model_dir, device)
    fused = Engine(loaded, EngineSettings(model=str(tiny_model_dir), warmup=False, dtype=dtype), device)
    assert fused.info()["timestamp_lstm"] == "fused"
    loaded = load_model(tiny_model_dir, device)
    settings = EngineSettings(model=str(tiny_model_dir), warmup=False, dtype=dtype, lstm_kernel="cudnn")
    cudnn = Engine(loaded, settings, device)
    a, b = fused.transcribe(clips), cudnn.transcribe(clips)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]  # the head never changes tokens
    spans_a = [s for r in a for span in r.timestamps for s in span]
    spans_b = [s for r in b for span in r.timestamps for s in span]
    assert len(spans_a) == len(spans_b) > 0
    close = sum(abs(p - q) <= 60 for p, q in zip(spans_a, spans_b, strict=True))
    assert close / len(spans_a) > 0.95


def test_only_configurations_whose_groups_fit_the_gpu_are_tried() -> None:
    """Programs of a group spin until all of them ran a step: a group larger than the GPU's SM
    count could wait forever, so such configurations are never launched."""
    candidates = lstm_kernels._CANDIDATES[16]
    assert lstm_kernels._fitting(candidates, 512, 132) == candidates
    streamed_only = lstm_kernels._fitting(candidates, 512, 20)  # 32 resident programs do not fit
    assert streamed_only and all(not c.resident for c in streamed_only)
    assert lstm_kernels._fitting(candidates, 512, 8) == ()
