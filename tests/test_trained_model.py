"""Real recognition on the demonstration model trained on synthetic Mandarin (issue #12).

The model (tests/assets/demo-model, see its MODEL_CARD.md and docs/demo-model.md) hears held-out
sentences spoken by espeak-ng, synthesised here with the voices and noise of training/evaluate.py.
Every figure a test checks is printed, so `pytest -s` shows the measurements.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from speech import held_out_speech

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
MODEL_ROOT = ROOT / "tests" / "assets" / "demo-model"
ASR_DIR = MODEL_ROOT / "asr"
PUNC_DIR = MODEL_ROOT / "punc"
TESTSET = json.loads((MODEL_ROOT / "testset.json").read_text("utf-8"))
N_CER = 240
N_BF16 = 120

# Issue #12's targets. The demonstration model (MODEL_CARD.md: two rounds of 15 minutes on one
# H200, then 5 minutes of stage 2 for the hotword path) meets them on the CPU; the assertions
# hold that model's level (random weights give a CER near 100%; the first model, 48%, would fail
# them), so a change that stops the product recognising fails. bf16's 99% is a GPU figure
# (test_trained_model_gpu.py).
pytestmark = pytest.mark.skipif(
    not (ASR_DIR / "model.pt").is_file() or not (PUNC_DIR / "model.pt").is_file(),
    reason="the demonstration model is not committed yet (tests/assets/demo-model/{asr,punc}): "
    "run training/gpu_run.sh and training/install_model.py, see docs/demo-model.md",
)


@pytest.fixture(scope="module")
def speech() -> Any:
    import espeak

    try:
        espeak.shared()
    except OSError as exc:
        pytest.skip(f"libespeak-ng is not installed (tests/apt-packages.txt: espeak-ng): {exc}")
    import evaluate

    return evaluate


@pytest.fixture(scope="module")
def demo_engine() -> Any:
    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    engine = Engine.from_settings(EngineSettings(model=str(ASR_DIR), device="cpu", dtype="fp32", warmup=False))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def held_out(speech: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    texts = TESTSET["cer"][:N_CER]
    return [(t, w, s) for t, (w, s) in zip(texts, held_out_speech(texts))]


@pytest.fixture(scope="module")
def held_out_results(demo_engine: Any, held_out: list) -> list[Any]:
    return demo_engine.transcribe([w for _, w, _ in held_out])


def test_model_files_match_their_checksums_and_size_budget() -> None:
    lines = (MODEL_ROOT / "SHA256SUMS").read_text().split("\n")
    listed = {}
    for line in filter(None, lines):
        digest, name = line.split("  ", 1)
        listed[name] = digest
    on_disk = {p.relative_to(MODEL_ROOT).as_posix() for d in (ASR_DIR, PUNC_DIR) for p in d.iterdir() if p.is_file()}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert hashlib.sha256((MODEL_ROOT / name).read_bytes()).hexdigest() == digest, name
    total = sum((MODEL_ROOT / n).stat().st_size for n in listed)
    assert total <= 25_000_000
    assert len(json.loads((ASR_DIR / "tokens.json").read_text("utf-8"))) == 8404


@pytest.fixture(scope="module")
def cer(speech: Any, held_out: list, held_out_results: list) -> float:
    refs = [t for t, _, _ in held_out]
    hyps = [r.text for r in held_out_results]
    value = speech.cer(refs, hyps)
    print(f"\nCER on {len(refs)} held-out utterances: {value:.2f}%")
    for ref, hyp in list(zip(refs, hyps))[:5]:
        print(f"  ref {ref}\n  hyp {hyp}")
    return float(value)


def test_cer_on_held_out_sentences(held_out: list, cer: float) -> None:
    assert len(held_out) >= 200
    assert cer <= 15.0  # issue #12's target; 10.47% measured on these 240 (14.05% round 2, 21.97% round 1)


def test_bf16_changes_only_tokens_the_model_decides_by_a_hair(speech: Any, demo_engine: Any, held_out: list,
                                                            held_out_results: list) -> None:
    """bf16 as the GPU runs it (weights cast, the CIF weights kept fp32; here on the CPU) against
    fp32: the CER stays, and every utterance whose tokens differ was decided by a hair in fp32:
    a token whose two best log-probabilities lie within 1.0 (over each utterance's tokens, the
    most rounding moves that gap is 0.07 at the median utterance, 0.16 at the 90th percentile,
    0.81 at the 99th, 1.66 at most on the round-2 model, over 240 utterances; 12 of their 14 flips
    were within 0.25, the largest 0.58; round 3: 7 of these 120 flip, the largest gap 0.26), or,
    where the token count differs, CIF weights summing to within 0.1 of the next count. The model
    cannot tell those apart and any rounding decides them: that, not the engine, keeps bf16 at
    93-94% of sequences equal on this model (issue #12's 99%; BENCHMARKS.md). A cast gone wrong
    moves far more."""
    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    # The first 120 of the 240: bf16 is emulated on CPUs without native bf16 products, and all
    # 240 took 58 s alone, 170-200 s beside another test file.
    held_out, held_out_results = held_out[:N_BF16], held_out_results[:N_BF16]
    waves = [w for _, w, _ in held_out]
    bf16 = Engine.from_settings(EngineSettings(model=str(ASR_DIR), device="cpu", dtype="bf16", warmup=False))
    try:
        results = bf16.transcribe(waves)
    finally:
        bf16.close()
    changed = [i for i, (a, b) in enumerate(zip(held_out_results, results)) if a.token_ids != b.token_ids]
    recounted = [i for i in changed if len(results[i].token_ids) != len(held_out_results[i].token_ids)]
    near = speech.margins(demo_engine, waves)
    refs = [t for t, _, _ in held_out]
    cer32, cer16 = speech.cer(refs, [r.text for r in held_out_results]), speech.cer(refs, [r.text for r in results])
    print(f"\nbf16 (CPU): {1 - len(changed) / len(waves):.3f} of {len(waves)} token sequences equal to fp32; "
          f"CER {cer32:.2f} -> {cer16:.2f}; utterances with a near tie in fp32: "
          f"{sum(m < speech.NEAR_TIE for m, _ in near) / len(near):.3f}; token counts changed: "
          f"{[(i, round(near[i][1], 4)) for i in recounted]}; token margins where bf16 differs: "
          f"max {max((near[i][0] for i in changed if i not in recounted), default=0):.3f}")
    assert all(near[i][1] < 2 * speech.NEAR_TIE for i in recounted)
    assert all(near[i][0] < 20 * speech.NEAR_TIE for i in changed if i not in recounted)
    assert len(changed) <= 0.1 * len(waves)  # 7 of these 120 (round 2: 9)
    assert abs(cer16 - cer32) <= 0.5


def test_funasr_automodel_loads_the_same_model(held_out: list, held_out_results: list) -> None:
    import logging

    from funasr import AutoModel

    model = AutoModel(model=str(ASR_DIR), disable_update=True, device="cpu", log_level="ERROR", disable_pbar=True)
    logging.getLogger().setLevel(logging.WARNING)  # AutoModel calls basicConfig(INFO)
    for (_, wave, _), ours in list(zip(held_out, held_out_results))[:6]:
        theirs = model.generate(input=[wave])
        text = theirs[0]["text"].replace(" ", "") if theirs else ""
        assert text == ours.text


@pytest.fixture(scope="module")
def start_shares(speech: Any, held_out: list, held_out_results: list) -> tuple[float, float]:
    """Shares of reference characters whose recognised start lies within 80 ms of the spoken one:
    pairing only recognised characters, and pairing substituted ones too (`start_hits`)."""
    shares = []
    for pair in (False, True):
        hits = total = 0
        for (text, _, starts), result in zip(held_out, held_out_results):
            h, n = speech.start_hits(text, result.tokens, result.timestamps, starts, substitutions=pair)
            hits, total = hits + h, total + n
        shares.append(hits / total)
    print(f"\ncharacter starts within {speech.START_TOLERANCE_MS} ms of {total}: {shares[0]:.3f} of the recognised "
          f"characters' alone, {shares[1]:.3f} with substituted characters paired too")
    return shares[0], shares[1]


def test_character_starts_land_on_the_spoken_characters(start_shares: tuple[float, float]) -> None:
    """Issue #12's target, >= 90% of characters within 80 ms of the known boundary, on where the
    timestamps land: a homophone written for the character spoken (a wrong character, which the
    CER counts) is paired with it and its start compared; a deleted character is a miss. Pairing
    only the recognised characters counts every wrong character as a timing miss too: that figure
    holds its level with a margin."""
    recognised_only, substitutions_paired = start_shares
    assert substitutions_paired >= 0.90  # 0.946 measured on these 240 (0.931 round 2); median error +4 ms
    assert recognised_only >= 0.80  # 0.857 (0.810 round 2, 0.677 round 1)


def _traps(speech: Any) -> tuple[list[dict], list[np.ndarray]]:
    traps = TESTSET["hotwords"]
    waves = [w for w, _ in held_out_speech([t["text"] for t in traps], offset=5000)]
    return traps, waves


def test_hotwords_raise_recall_of_rare_homophones(speech: Any, demo_engine: Any) -> None:
    traps, waves = _traps(speech)
    assert len(traps) >= 30
    words = [t["hotword"] for t in traps]
    plain = demo_engine.transcribe(waves)
    biased = demo_engine.transcribe(waves, hotwords=words)
    without = sum(t["hotword"] in r.text for t, r in zip(traps, plain)) / len(traps)
    with_ = sum(t["hotword"] in r.text for t, r in zip(traps, biased)) / len(traps)
    print(f"\nhotword recall: {without:.2f} without, {with_:.2f} with ({len(traps)} terms)")
    assert with_ - without >= 0.30


def test_hotwords_are_not_inserted_where_they_are_not_spoken(speech: Any, demo_engine: Any, held_out: list) -> None:
    words = [t["hotword"] for t in TESTSET["hotwords"]]
    results = demo_engine.transcribe([w for _, w, _ in held_out], hotwords=words)
    inserted = [r.text for (t, _, _), r in zip(held_out, results)
                if any(w in r.text and w not in t for w in words)]
    rate = len(inserted) / len(held_out)
    print(f"\nfalse hotword insertions: {rate:.3f} ({inserted[:3]})")
    assert rate <= 0.02


def test_each_request_in_a_batch_gets_its_own_hotwords(speech: Any, demo_engine: Any) -> None:
    traps, waves = _traps(speech)
    lists = [[t["hotword"]] if i % 2 == 0 else [] for i, t in enumerate(traps)]
    mixed = demo_engine.transcribe(waves, hotwords=lists)
    alone = [demo_engine.transcribe([w], hotwords=ls)[0] for w, ls in zip(waves, lists)]
    assert [r.token_ids for r in mixed] == [r.token_ids for r in alone]
    listed = [t["hotword"] in r.text for t, r, ls in zip(traps, mixed, lists) if ls]
    unlisted = [t["hotword"] in r.text for t, r, ls in zip(traps, mixed, lists) if not ls]
    print(f"\nin one batch: {sum(listed)}/{len(listed)} listed terms written, {sum(unlisted)}/{len(unlisted)} unlisted")
    assert sum(unlisted) <= 1


def test_bias_head_is_the_same_in_the_engine_funasr_and_training(speech: Any, demo_engine: Any) -> None:
    """The bias head's distribution on a trap with its word listed is the same in the engine, in
    funasr's AutoModel and in the training code's path (train_asr.seaco_logits on the same
    recogniser outputs and list): what training measures is what inference runs (issue #12: when
    hotwords did nothing, this placed the cause in training)."""
    import logging

    import torch
    import train_asr
    from funasr import AutoModel
    from funasr.models.transformer.utils.nets_utils import make_pad_mask

    traps, waves = _traps(speech)
    model = AutoModel(model=str(ASR_DIR), disable_update=True, device="cpu", log_level="ERROR", disable_pbar=True)
    logging.getLogger().setLevel(logging.WARNING)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        return lambda module, args, out: seen.__setitem__(name, out.detach().float())

    hooks = [demo_engine.model.hotword_output_layer.register_forward_hook(keep("engine")),
             model.model.hotword_output_layer.register_forward_hook(keep("funasr"))]
    try:
        for trap, wave in list(zip(traps, waves))[:2]:
            word = trap["hotword"]
            demo_engine.transcribe([wave], hotwords=[word])
            model.generate(input=[wave], hotword=word)
            ours, theirs = seen["engine"][0], seen["funasr"][0]
            assert ours.shape == theirs.shape
            assert torch.allclose(ours.log_softmax(-1), theirs.log_softmax(-1), atol=2e-3)
            # The training path on the same outputs of the recogniser, the list built as in training.
            net = demo_engine.model
            with torch.no_grad():
                feats, lens = demo_engine._features_of(*demo_engine._pad([wave]))
                enc, enc_lens = net.encode(feats, lens)
                mask = (~make_pad_mask(enc_lens, maxlen=enc.size(1)))[:, None, :]
                acoustic, n = net.predictor(enc, None, mask, ignore_id=-1)[:2]
                n = n.round().long()
                acoustic = acoustic[:, : int(n)]
                hidden = net.decoder(enc, enc_lens, acoustic, n, return_hidden=True)[0]
                ids = demo_engine.hotword_tokenizer.encode((word,))
                hot = train_asr.Hotwords(
                    pad=train_asr.pad([np.array(x) for x in ids], 0, torch.device("cpu")),
                    lengths=torch.tensor([len(x) for x in ids], dtype=torch.int32),
                    index=torch.arange(len(ids))[None], counts=torch.tensor([len(ids)]), labels=torch.empty(0))
                # seaco_logits drops the last position (</s>), as funasr's loss does; inference keeps it.
                trained = train_asr.seaco_logits(net, acoustic, hidden, n, hot)[0].float()
            assert torch.allclose(trained.log_softmax(-1), ours[:-1].log_softmax(-1), atol=2e-3)
    finally:
        for h in hooks:
            h.remove()


def test_listed_hotwords_are_written_in_a_mixed_batch(speech: Any, demo_engine: Any) -> None:
    traps, waves = _traps(speech)
    lists = [[t["hotword"]] if i % 2 == 0 else [] for i, t in enumerate(traps)]
    mixed = demo_engine.transcribe(waves, hotwords=lists)
    listed = [t["hotword"] in r.text for t, r, ls in zip(traps, mixed, lists) if ls]
    assert sum(listed) >= len(listed) * 0.3


def _ten_minute_recording(speech: Any) -> tuple[np.ndarray, list[str], list[float]]:
    """Held-out sentences with 0.7-1.6 s pauses over faint noise until ten minutes are filled."""
    from synth import test_utterance

    rng = random.Random(7)
    parts, texts, starts = [np.zeros(8000, np.float32)], [], []
    pos = 8000
    for i, sentence in enumerate(TESTSET["long"]):
        if pos >= 600 * 16000:
            break
        wave, char_starts, end_ms = test_utterance(sentence, 20_000 + i, noise_db=None)
        begin, end = int(char_starts[0] * 16), int(end_ms * 16)
        clip = wave[begin:end] * rng.uniform(0.5, 1.0)
        starts.append(pos / 16000)
        texts.append(sentence)
        pause = np.zeros(int(rng.uniform(0.7, 1.6) * 16000), np.float32)
        parts += [clip.astype(np.float32), pause]
        pos += len(clip) + len(pause)
    audio = np.concatenate(parts)
    audio = audio + np.random.default_rng(0).normal(0, 0.003, len(audio)).astype(np.float32)
    return audio, texts, starts


@pytest.fixture(scope="module")
def ten_minutes(speech: Any, demo_engine: Any) -> dict[str, Any]:
    """The product's pipeline on a 10-minute recording: VAD, the engine, the trained punctuation
    model, sentences as subtitle cues."""
    from asr.pipeline.options import Options
    from asr.pipeline.pipeline import blocks_stream, transcribe_files
    from asr.settings import load_settings

    audio, texts, true_starts = _ten_minute_recording(speech)
    assert len(audio) >= 600 * 16000
    settings = load_settings(None, engine={"model": str(ASR_DIR), "device": "cpu"},
                             longform={"punc_model": str(PUNC_DIR)})
    options = Options(vad=True, punctuation=True, itn=False)  # the references spell numbers out
    (result,) = transcribe_files(settings, demo_engine, [blocks_stream([audio], len(audio) / 16000)], options)
    cer = speech.cer(["".join(texts)], [result.text])
    cues = result.sentences
    cue_starts = np.array([c.start_ms / 1000 for c in cues])
    near = float(np.mean([float(np.min(np.abs(np.array(true_starts) - s))) <= 0.6 for s in cue_starts]))
    print(f"\n10-minute recording: CER {cer:.2f}%, {len(cues)} cues for {len(texts)} sentences, "
          f"{near:.3f} of cue starts within 0.6 s of a sentence start")
    print("  " + " / ".join(c.text for c in cues[:6]))
    return {"result": result, "cer": cer, "cues": cues, "sentences": len(texts), "near": near}


def test_ten_minutes_with_vad_punctuation_and_subtitles(ten_minutes: dict[str, Any]) -> None:
    from asr.pipeline.subtitles import SubtitleOptions

    cues, sentences = ten_minutes["cues"], ten_minutes["sentences"]
    assert ten_minutes["result"].applied.punctuation and any(c.text[-1:] in "。？" for c in cues)
    # Issue #12's targets. 10.25% measured (13.34% round 2, 20.2% round 1; 31% when the VAD
    # merged sentences across their pauses).
    assert ten_minutes["cer"] <= 18.0
    # 154 cues for 149 sentences, 0.955 of cue starts near a sentence start (rounds 2 and 3; round
    # 1: 153, 0.941; cues break at pauses of 0.8 s; at 1.5 s: 127 cues, 0.677).
    assert abs(len(cues) - sentences) <= 0.2 * sentences
    assert ten_minutes["near"] >= 0.90
    assert all(c.end_ms - c.start_ms <= SubtitleOptions().max_duration_ms for c in cues)
