"""Engine behaviour that only a CUDA GPU can show (skipped on CPU-only machines such as CI)."""

from __future__ import annotations

import re

import pytest
import torch

from asr.engine.core import Engine
from asr.engine.model import load_model
from asr.settings import EngineSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HOTWORDS = ("丁七", "万丈", "hello")


def _engine(model_dir, **settings) -> Engine:
    device = torch.device("cuda")
    conf = EngineSettings(model=str(model_dir), device="cuda", warmup=False, **settings)
    return Engine(load_model(model_dir, device), conf, device)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_side_stream_timestamps_equal_inline(tiny_model_dir, clips, dtype) -> None:
    inline = _engine(tiny_model_dir, dtype=dtype, overlap_timestamps=False)
    overlapped = _engine(tiny_model_dir, dtype=dtype, overlap_timestamps=True)
    lists = [HOTWORDS, (), HOTWORDS, (), ("七万",)]
    for _ in range(3):  # repeated: a stream race would show as a changed result
        a = inline.transcribe(clips, hotwords=lists)
        b = overlapped.transcribe(clips, hotwords=lists)
        assert [r.token_ids for r in a] == [r.token_ids for r in b]
        assert [r.timestamps for r in a] == [r.timestamps for r in b]


def test_gpu_fp32_matches_cpu_reference(tiny_model_dir, clips, engine) -> None:
    gpu = _engine(tiny_model_dir, dtype="fp32", attention="eager", frontend="funasr")
    for ref, got in zip(engine.probe(clips), gpu.probe(clips), strict=True):
        assert int(ref["token_len"]) == int(got["token_len"])
        cos = torch.nn.functional.cosine_similarity(ref["enc"].flatten(), got["enc"].flatten(), dim=0)
        assert cos > 0.9999


@pytest.mark.parametrize("attention", ["sdpa", "varlen", "eager"])
def test_every_attention_backend_runs_in_bf16(tiny_model_dir, clips, attention) -> None:
    eng = _engine(tiny_model_dir, dtype="bf16", attention=attention)
    results = eng.transcribe(clips, hotwords=[HOTWORDS] * len(clips))
    assert all(r.text for r in results)


def test_fp16_overflow_rows_are_redone_in_fp32(tiny_model_dir, clips, caplog) -> None:
    """An encoder whose last feed-forward layer is scaled up overflows fp16 (inf, then NaN after
    the norm) on every row; the engine redoes those rows in fp32, whose encoder output then equals
    an fp32 engine's with the same weights."""
    fp16 = _engine(tiny_model_dir, dtype="fp16")
    fp32 = _engine(tiny_model_dir, dtype="fp32")
    for eng in (fp16, fp32):
        w_1 = eng.model.encoder.encoders[-1].feed_forward.w_1
        w_1.weight.mul_(1e6)
        w_1.bias.mul_(1e6)
    with caplog.at_level("WARNING", logger="asr.engine.core"):
        redone = fp16.probe(clips)
    redone_rows = sum(int(n) for n in re.findall(r"fp16 overflow in (\d+) item", caplog.text))
    assert redone_rows == len(clips)
    for got, want in zip(redone, fp32.probe(clips), strict=True):
        assert torch.isfinite(got["enc"]).all()
        cos = torch.nn.functional.cosine_similarity(got["enc"].flatten(), want["enc"].flatten(), dim=0)
        assert cos > 0.99999
        assert int(got["token_len"]) == int(want["token_len"])


def test_varlen_called_without_its_dispatcher_equals_the_public_function_and_skips_dynamo() -> None:
    """The engine calls varlen_attn's body directly: the first call of the public function
    imports torch._dynamo (seconds of every cold start). Same kernel, same numbers."""
    import subprocess
    import sys

    from asr.engine import attention

    varlen = pytest.importorskip("torch.nn.attention.varlen")
    if attention._VARLEN is None or attention._VARLEN is varlen.varlen_attn:
        pytest.skip("this torch has no varlen body to call directly")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(300, 4, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    cu = torch.tensor([0, 100, 300], device="cuda", dtype=torch.int32)
    assert torch.equal(attention._VARLEN(q, k, v, cu, cu, 200, 200, scale=0.125),
                       varlen.varlen_attn(q, k, v, cu, cu, 200, 200, scale=0.125))
    code = ("import sys, torch; from asr.engine import attention as a; "
            "x = torch.randn(8, 4, 64, device='cuda', dtype=torch.bfloat16); "
            "cu = torch.tensor([0, 8], device='cuda', dtype=torch.int32); a._VARLEN(x, x, x, cu, cu, 8, 8); "
            "torch.cuda.synchronize(); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_cuda_warmup_thread_ends_cleanly(dtype, caplog) -> None:
    """The command line's head start on CUDA (context, cuBLAS, cuDNN, Triton's FSMN kernel)
    finishes without an error (it would only log one), whatever the engine's dtype."""
    import logging

    from asr.runtime import start_cuda_warmup

    caplog.set_level(logging.DEBUG, logger="asr.runtime")
    thread = start_cuda_warmup(EngineSettings(device="cuda", dtype=dtype))
    assert thread is not None
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert torch.cuda.is_initialized()
    assert not [r for r in caplog.records if "warm-up" in r.getMessage()]
