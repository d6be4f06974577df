"""Hotwords that explain themselves, through the pipeline: where each hotword is in the result
(characters and milliseconds), what the correction dictionary changed, and `hotword_diff` (the
same clip recognised with and without the hotwords in one engine batch).

The tiny random-weight model says nothing these checks could read, so an engine stand-in says
known text: the biased text when it is given the hotword, the plain one otherwise, one character
per 100 ms (the trained-model form of these checks is in test_trained_model.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from speech import held_out_speech

from asr.engine.core import Transcript
from asr.errors import OptionsError
from asr.pipeline.options import Options
from asr.pipeline.pipeline import transcribe_files
from asr.pipeline.result import DiffSpan, HotwordSetUse
from asr.settings import load_settings

PLAIN = "我在用通易千文写代码"
BIASED = "我在用通义千问写代码"
SR = 16000


class HotwordEngine:
    """Says BIASED for a clip given the hotword 通义千问 and PLAIN otherwise; records its calls."""

    def __init__(self, plain: str = PLAIN, biased: str = BIASED, step_ms: int = 100) -> None:
        self.plain, self.biased, self.step_ms = plain, biased, step_ms
        self.calls: list[list[list[str]]] = []

    def transcribe(self, audios: Any, hotwords: Any = None) -> list[Transcript]:
        lists = [list(h) for h in hotwords] if hotwords else [[] for _ in audios]
        self.calls.append(lists)
        out = []
        for audio, words in zip(audios, lists):
            text = self.biased if "通义千问" in words else self.plain
            chars = list(text)
            stamps = [(self.step_ms * i, self.step_ms * i + self.step_ms - 10) for i in range(len(chars))]
            out.append(Transcript(text, chars, list(range(len(chars))), stamps, len(audio) / SR))
        return out

    def info(self) -> dict[str, Any]:
        return {"model": "constructed"}


def _settings() -> Any:
    return load_settings(None, engine={"device": "cpu"}, longform={"punc_model": None})


def _run(options: Options, engine: HotwordEngine | None = None, seconds: float = 2.0) -> Any:
    audio = (0.1 * np.sin(np.arange(int(seconds * SR)) / 5)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    return transcribe_files(_settings(), engine or HotwordEngine(), [buf.getvalue()], options)[0]


def test_hits_say_where_each_hotword_is_in_characters_and_time() -> None:
    result = _run(Options(hotwords=("通义千问", "代码", "没说过")))
    assert result.text == BIASED
    assert [(h.word, h.start, h.end, h.start_ms, h.end_ms) for h in result.hotword_hits] == [
        ("通义千问", 3, 7, 300, 690), ("代码", 8, 10, 800, 990),
    ]  # a hotword never said is not listed
    assert all(result.text[h.start:h.end] == h.word for h in result.hotword_hits)
    assert result.hotword_diff is None and result.applied.hotword_diff is False


def test_hits_stay_on_their_characters_when_itn_and_sentences_change_the_text() -> None:
    # 27 characters: two sentences (24 per cue), ITN writes the date as digits before the hotword.
    spoken = "会议定在二零二六年十二月一日在通义千问大楼开会请大家准时到达"
    engine = HotwordEngine(plain=spoken, biased=spoken)
    result = _run(Options(hotwords=("通义千问", "准时")), engine, seconds=4.0)
    assert result.text == "会议定在2026年12月1日在通义千问大楼开会请大家准时到达"
    assert len(result.sentences) == 2
    hits = {h.word: h for h in result.hotword_hits}
    assert set(hits) == {"通义千问", "准时"}
    for h in hits.values():
        assert result.text[h.start:h.end] == h.word
    # 通义千问 is characters 15-18 of what was said: 1500 ms to 1890 ms.
    assert (hits["通义千问"].start_ms, hits["通义千问"].end_ms) == (1500, 1890)


def test_corrections_replace_after_recognition_and_say_where() -> None:
    result = _run(Options(corrections=(("通易千文", "通义千问"), ("没有的", "不会用"))))
    assert result.text == BIASED  # the plain recognition, corrected
    [hit] = result.corrections
    assert (hit.wrong, hit.right, hit.start, hit.end) == ("通易千文", "通义千问", 3, 7)
    assert (hit.start_ms, hit.end_ms) == (300, 690)
    assert result.text[hit.start:hit.end] == hit.right
    token = next(t for t in result.tokens if t.text == "通义千问")
    assert (token.start_ms, token.end_ms) == (300, 690)  # the replaced characters' time


def test_hotword_diff_recognises_each_clip_twice_in_one_batch() -> None:
    engine = HotwordEngine()
    result = _run(Options(hotwords=("通义千问",), hotword_diff=True), engine)
    assert result.text == BIASED  # the result is the recognition with the hotwords
    assert engine.calls == [[["通义千问"], []]]  # one engine call: with and without, side by side
    assert result.applied.hotword_diff is True
    assert result.hotword_diff == (
        DiffSpan(400, 490, "义", "易", 4, 5),
        DiffSpan(600, 690, "问", "文", 6, 7),
    )
    for span in result.hotword_diff:
        assert result.text[span.start:span.end] == span.with_hotwords


def test_hotword_diff_is_empty_when_the_hotwords_change_nothing() -> None:
    engine = HotwordEngine(biased=PLAIN)
    result = _run(Options(hotwords=("通义千问",), hotword_diff=True), engine)
    assert result.hotword_diff == () and result.to_dict()["hotword_diff"] == []


def test_hotword_diff_reports_text_the_hotwords_removed_or_added() -> None:
    engine = HotwordEngine(plain="我们用通义千问", biased="我用通义千问了")
    result = _run(Options(hotwords=("通义千问",), hotword_diff=True), engine)
    spans = [(d.with_hotwords, d.without_hotwords, d.start, d.end) for d in result.hotword_diff]
    # 们 was only heard without the hotwords (an empty range where it was); 了 only with them.
    assert spans == [("", "们", 1, 1), ("了", "", 6, 7)]
    assert result.to_dict()["hotword_diff"][0]["without"] == "们"


def test_hotword_diff_without_hotwords_says_so() -> None:
    engine = HotwordEngine()
    result = _run(Options(hotword_diff=True), engine)
    assert result.hotword_diff is None and result.applied.hotword_diff is False
    assert "hotword_diff_without_hotwords" in [n.code for n in result.notices]
    assert engine.calls == [[[]]]  # recognised once


def test_the_sets_used_are_recorded_and_unresolved_sets_are_refused() -> None:
    used = (HotwordSetUse("客服", 3),)
    result = _run(Options(hotwords=("通义千问",), hotword_sets=used))
    assert result.applied.hotword_sets == used
    assert result.to_dict()["applied"]["hotword_sets"] == [{"name": "客服", "version": 3}]
    with pytest.raises(OptionsError, match="resolved"):
        _run(Options(hotword_sets=("客服",)))


# ---- real recognition: the trained demonstration model --------------------------------------

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "tests" / "assets" / "demo-model"


class CountingEngine:
    """The real engine, with a count of the clips of each engine call."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.calls: list[int] = []

    def transcribe(self, audios: Any, hotwords: Any = None) -> Any:
        self.calls.append(len(audios))
        return self.engine.transcribe(audios, hotwords)

    def info(self) -> dict[str, Any]:
        return self.engine.info()


@pytest.fixture(scope="module")
def demo() -> tuple[Any, list[np.ndarray]]:
    """The demonstration model and held-out sentences spoken by espeak-ng (docs/demo-model.md)."""
    if not (DEMO / "asr" / "model.pt").is_file():
        pytest.skip("the demonstration model is not in tests/assets/demo-model (docs/demo-model.md)")
    from asr.engine.core import Engine
    from asr.settings import EngineSettings

    texts = json.loads((DEMO / "testset.json").read_text("utf-8"))["cer"][:8]
    waves = [_pcm16(w) for w, _ in held_out_speech(texts)]
    engine = Engine.from_settings(EngineSettings(model=str(DEMO / "asr"), device="cpu", dtype="fp32", warmup=False))
    yield engine, waves
    engine.close()


def _pcm16(audio: np.ndarray) -> np.ndarray:
    """The samples a 16-bit WAV of `audio` decodes to (what the pipeline hands the engine)."""
    return (np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768).astype(np.float32)


def _wav16(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_real_recognition_hits_and_diff_follow_the_engine(demo: Any) -> None:
    """On real recognition: the result is the recognition with the hotwords, each hit sits on the
    characters and the engine's times of the word, and applying the diff spans to the text gives
    the recognition without the hotwords. (This model's hotword path barely changes its output,
    MODEL_CARD.md, so the hotwords are words it writes anyway; the constructed tests above cover
    text the hotwords change.)"""
    engine, waves = demo
    plain = engine.transcribe(waves)
    hotwords = tuple(dict.fromkeys(r.text[i:i + 2] for r in plain for i in (0, 4) if len(r.text) >= i + 2))
    biased = engine.transcribe(waves, [list(hotwords)] * len(waves))
    counting = CountingEngine(engine)
    settings = load_settings(None, engine={"device": "cpu"}, longform={"punc_model": None}, pipeline={"itn": False})
    results = transcribe_files(settings, counting, [_wav16(w) for w in waves],
                               Options(hotwords=hotwords, hotword_diff=True, vad=False))
    assert sum(counting.calls) == 2 * len(waves) and len(counting.calls) < len(waves)  # twice each, batched
    hits = 0
    for result, b, p in zip(results, biased, plain):
        assert result.text == b.text
        rebuilt, at = [], 0
        for d in result.hotword_diff:
            assert result.text[d.start:d.end] == d.with_hotwords
            rebuilt += [result.text[at:d.start], d.without_hotwords]
            at = d.end
        assert "".join([*rebuilt, result.text[at:]]) == p.text
        assert (result.hotword_diff == ()) is (b.text == p.text)
        for h in result.hotword_hits:
            assert result.text[h.start:h.end] == h.word and h.word in hotwords
            # One token per character here (no punctuation, no ITN): the word's engine times.
            stamps = b.timestamps[h.start:h.end]
            assert (h.start_ms, h.end_ms) == (stamps[0][0], min(stamps[-1][1], result.duration_ms))
        hits += len(result.hotword_hits)
    print(f"\n{hits} hotword hits in {len(results)} clips; "
          f"{sum(bool(r.hotword_diff) for r in results)} clips changed by the hotwords")
    assert hits >= len(waves)
