"""Measure a trained model directory with the product's own engine: CER on held-out sentences,
hotword recall and false insertions, character start times, precision agreement.

Used at the end of the GPU run (numbers for the model card) and by the tests, which hear the same
utterances: `held_out_audio` synthesises text i with voice seed `SEED_BASE + i` and 30 dB noise.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from espeak import is_cjk  # noqa: E402
from synth import test_utterance  # noqa: E402

SEED_BASE = 10_000
START_TOLERANCE_MS = 80


def chars(text: str) -> str:
    return "".join(c for c in text if is_cjk(c))


def edit_distance(a: str, b: str) -> int:
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate over CJK characters (punctuation ignored), in percent."""
    errors = sum(edit_distance(chars(r), chars(h)) for r, h in zip(refs, hyps, strict=True))
    return 100.0 * errors / max(1, sum(len(chars(r)) for r in refs))


def error_kinds(refs: Sequence[str], hyps: Sequence[str], reading: Any = None) -> dict[str, float]:
    """Percent of reference characters per kind of error: `tone` (a substitution whose reading
    differs from the reference's only in tone), `homophone` (same reading, tone included),
    `other` substitutions (uneven replaced runs included), `deleted`, `inserted`. Readings are
    espeak-ng's for each character alone (`reading(char) -> str`, tones as digits)."""
    import re

    if reading is None:
        from espeak import shared

        reading = shared().phonemes
    cache: dict[str, str] = {}

    def read(c: str) -> str:
        if c not in cache:
            cache[c] = reading(c)
        return cache[c]

    counts = dict.fromkeys(("tone", "homophone", "other", "deleted", "inserted"), 0)
    total = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        ref, hyp = chars(ref), chars(hyp)
        total += len(ref)
        for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, ref, hyp, autojunk=False).get_opcodes():
            if op == "replace" and a2 - a1 == b2 - b1:
                for x, y in zip(ref[a1:a2], hyp[b1:b2]):
                    if read(x) == read(y):
                        counts["homophone"] += 1
                    elif re.sub(r"\d", "", read(x)) == re.sub(r"\d", "", read(y)):
                        counts["tone"] += 1
                    else:
                        counts["other"] += 1
            elif op == "replace":
                counts["other"] += max(a2 - a1, b2 - b1)
            elif op == "delete":
                counts["deleted"] += a2 - a1
            elif op == "insert":
                counts["inserted"] += b2 - b1
    return {k: round(100.0 * v / max(1, total), 2) for k, v in counts.items()}


def held_out_audio(texts: Sequence[str], offset: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(16 kHz float32 wave, character starts in ms) per text, as the tests hear them."""
    out = []
    for i, text in enumerate(texts):
        wave, starts, _ = test_utterance(text, SEED_BASE + offset + i)
        out.append((wave, starts))
    return out


def start_hits(ref: str, tokens: Sequence[str], stamps: Sequence[Sequence[int]], true_starts: np.ndarray,
               tolerance_ms: float = START_TOLERANCE_MS, substitutions: bool = False) -> tuple[int, int]:
    """(characters whose predicted start is within tolerance, reference characters). Characters
    are paired by aligning the recognised text to the reference; unpaired ones count as misses.
    By default only recognised characters pair, so a homophone written for the one spoken is a
    timing miss too, whatever its time. `substitutions=True` also pairs a run of characters
    replaced by a run of the same length, character by character (室 written 是 at the same
    place): a figure of where the timestamps land, apart from which character the decoder chose;
    deleted characters stay misses."""
    ref = chars(ref)
    hyp = "".join(tokens)
    if len(hyp) != len(stamps):  # English words or <unk>: pair nothing rather than mis-pair
        return 0, len(ref)
    hits = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ref, hyp, autojunk=False).get_opcodes():
        if tag == "equal" or (substitutions and tag == "replace" and i2 - i1 == j2 - j1):
            hits += sum(abs(stamps[j1 + k][0] - true_starts[i1 + k]) <= tolerance_ms for k in range(i2 - i1))
    return hits, len(ref)


NEAR_TIE = 0.05


def decision_margins(engine: Any, waves: Sequence[np.ndarray]) -> list[float]:
    """Per utterance, the smallest gap between the decoder's two best log-probabilities over its
    tokens (inf for none). A token decided by a hair is decided by rounding too: any change of
    precision (bf16, fp16, int8) may flip it, so the share of utterances with a near tie bounds how
    many token sequences another precision can keep."""
    return [token for token, _ in margins(engine, waves)]


def margins(engine: Any, waves: Sequence[np.ndarray]) -> list[tuple[float, float]]:
    """Per utterance, `decision_margins`' token margin and the count margin: how far the CIF
    weights' sum lies from the integer where the token count would change (the count is its floor,
    funasr's tail frame included). A count decided by a hair is another coin flip that rounding
    decides: one token more or fewer, and every later token shifts."""
    import torch

    from asr.engine.cif import _token_weights

    predictor = engine.model.predictor
    out = []
    for probe in engine.probe(waves):
        logits, enc = probe["logits"], probe["enc"]
        token = float("inf")
        if logits.shape[0]:
            top = logits.topk(2, dim=-1).values
            token = float((top[:, 0] - top[:, 1]).min())
        param = next(predictor.parameters())
        with torch.inference_mode():
            _, alphas, _ = _token_weights(predictor, enc[None].transpose(1, 2).to(param),
                                          torch.ones(1, enc.shape[0], device=param.device))
        frac = float(alphas.sum()) % 1.0
        out.append((token, min(frac, 1.0 - frac)))
    return out


def hotword_counts(text: str, words: Sequence[str]) -> dict[str, int]:
    return {w: text.count(w) for w in words if w in text}


def evaluate(model_dir: Path, testset: dict[str, Any], device: str = "auto",
             dtypes: Sequence[str] = ("fp32",), limit: int | None = None) -> dict[str, Any]:
    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    texts = testset["cer"][:limit] if limit else testset["cer"]
    audio = held_out_audio(texts)
    waves = [a for a, _ in audio]
    metrics: dict[str, Any] = {"cer_utterances": len(texts)}
    results: dict[str, list[Any]] = {}
    for dtype in dtypes:
        engine = Engine.from_settings(EngineSettings(model=str(model_dir), device=device, dtype=dtype, warmup=False))
        results[dtype] = engine.transcribe(waves)
        metrics[f"cer_{dtype}"] = round(cer(texts, [r.text for r in results[dtype]]), 2)
        if dtype == "fp32":
            for key, pair in (("start_within_80ms", False), ("start_within_80ms_substitutions_paired", True)):
                hits = total = 0
                for text, (_, starts), r in zip(texts, audio, results[dtype]):
                    h, n = start_hits(text, r.tokens, r.timestamps, starts, substitutions=pair)
                    hits, total = hits + h, total + n
                metrics[key] = round(hits / max(1, total), 4)
            traps = testset["hotwords"]
            words = [t["hotword"] for t in traps]
            trap_audio = [a for a, _ in held_out_audio([t["text"] for t in traps], offset=5000)]
            plain = engine.transcribe(trap_audio)
            biased = engine.transcribe(trap_audio, hotwords=words)
            metrics["hotword_recall_without"] = round(
                sum(t["hotword"] in r.text for t, r in zip(traps, plain)) / len(traps), 3)
            metrics["hotword_recall_with"] = round(
                sum(t["hotword"] in r.text for t, r in zip(traps, biased)) / len(traps), 3)
            with_words = engine.transcribe(waves, hotwords=words)
            inserted = sum(bool(hotword_counts(r.text, words)) and not hotword_counts(t, words)
                           for t, r in zip(texts, with_words))
            metrics["hotword_false_insertion_rate"] = round(inserted / len(texts), 4)
            metrics["cer_fp32_with_hotwords"] = round(cer(texts, [r.text for r in with_words]), 2)
            metrics["errors_fp32"] = error_kinds(texts, [r.text for r in results[dtype]])
            margins = decision_margins(engine, waves)
            metrics[f"near_tie_share_fp32_{NEAR_TIE}"] = round(sum(m < NEAR_TIE for m in margins) / len(texts), 4)
            metrics["examples"] = [{"ref": t, "hyp": r.text} for t, r in zip(texts[:8], results[dtype][:8])]
        engine.close()
    if "fp32" in results:
        for dtype in dtypes:
            if dtype != "fp32":
                same = sum(a.token_ids == b.token_ids for a, b in zip(results["fp32"], results[dtype]))
                metrics[f"tokens_equal_{dtype}_vs_fp32"] = round(same / len(texts), 4)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate a trained model directory.")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--testset", type=Path, required=True, help="testset.json (or corpus.json.gz holding one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtypes", nargs="+", default=["fp32"])
    p.add_argument("--limit", type=int)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.testset.suffix == ".gz":
        import gzip

        with gzip.open(a.testset, "rt", encoding="utf-8") as f:
            testset = json.load(f)["testset"]
    else:
        testset = json.loads(a.testset.read_text("utf-8"))
    metrics = evaluate(a.model_dir, testset, a.device, a.dtypes, a.limit)
    text = json.dumps(metrics, indent=1, ensure_ascii=False)
    if a.out:
        a.out.write_text(text, "utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
