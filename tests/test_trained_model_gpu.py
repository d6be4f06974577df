"""bf16 and fp16 keep the demonstration model's tokens (issue #12): only a CUDA GPU can show it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
MODEL_ROOT = ROOT / "tests" / "assets" / "demo-model"
ASR_DIR = MODEL_ROOT / "asr"

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not (ASR_DIR / "model.pt").is_file(),
                       reason="the demonstration model is not committed yet (docs/demo-model.md)"),
]


@pytest.fixture(scope="module", params=["bf16", "fp16"])
def half_vs_fp32(request: pytest.FixtureRequest) -> tuple[str, float, float, float]:
    import evaluate

    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    dtype = request.param
    texts = json.loads((MODEL_ROOT / "testset.json").read_text("utf-8"))["cer"]
    waves = [w for w, _ in evaluate.held_out_audio(texts)]
    results = {}
    for d in ("fp32", dtype):
        engine = Engine.from_settings(EngineSettings(model=str(ASR_DIR), device="cuda", dtype=d, warmup=False))
        results[d] = engine.transcribe(waves)
        engine.close()
    same = sum(a.token_ids == b.token_ids for a, b in zip(results["fp32"], results[dtype])) / len(texts)
    cer32 = evaluate.cer(texts, [r.text for r in results["fp32"]])
    cer_half = evaluate.cer(texts, [r.text for r in results[dtype]])
    print(f"\n{dtype}: {same:.3f} of {len(texts)} token sequences equal to fp32; CER {cer32:.2f} -> {cer_half:.2f}")
    return dtype, same, cer32, cer_half


def test_half_precision_keeps_the_trained_models_recognition(half_vs_fp32: tuple[str, float, float, float]) -> None:
    """The demonstration model's level (training/evaluate.py on the H200, 300 utterances: bf16
    0.927, fp16 0.997 of token sequences equal; CER 9.88 -> 9.96 / 9.90)."""
    _, same, cer32, cer_half = half_vs_fp32
    assert same >= 0.90
    assert abs(cer_half - cer32) <= 0.5


def test_half_precision_keeps_99_percent_of_token_sequences(
    half_vs_fp32: tuple[str, float, float, float], request: pytest.FixtureRequest
) -> None:
    dtype, same, cer32, cer_half = half_vs_fp32
    if dtype == "bf16":  # fp16 reaches the target (0.99); bf16's 8-bit mantissa does not yet
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="issue #12's target: bf16 keeps 93-94% of the demonstration model's sequences (10% "
                   "of its utterances hold a homophone pick within 0.05 in fp32: coin flips any rounding decides)"))
    assert same >= 0.99 and abs(cer_half - cer32) <= 0.2
