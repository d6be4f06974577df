"""Subtitles, punctuation wiring and the long-recording timeline."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from speech import SENTENCES, recording, require_espeak

from asr.pipeline.formats import render
from asr.pipeline.options import Options
from asr.pipeline.pipeline import transcribe_files
from asr.pipeline.punc import Punctuator, make_punc_model_dir, split_words
from asr.pipeline.subtitles import (
    Sentence,
    SubtitleError,
    TimedWord,
    build_sentences,
    join_words,
    to_paragraphs,
    to_srt,
    to_vtt,
    validate_srt,
    validate_vtt,
    words_from_tokens,
)
from asr.settings import load_settings

SR = 16000


def test_srt_vtt_never_overlap_and_validate():
    # Overlapping, backwards and zero-length input times must still give valid files.
    sents = [Sentence("你好。", 1000, 2500), Sentence("世界", 2000, 2000),
             Sentence("  ", 3000, 3500), Sentence("再见！", 1500, 4000, "A"),
             Sentence("long", 3_600_000 * 2 + 5, 3_600_000 * 2 + 900)]
    srt = to_srt(sents)
    assert validate_srt(srt) == 4
    assert "02:00:00,005 --> 02:00:00,900" in srt
    vtt = to_vtt(sents, speakers=True)
    assert validate_vtt(vtt) == 4
    assert "<v A>再见！" in vtt


@pytest.mark.parametrize("bad", [
    "1\n00:00:01,000 --> 00:00:02,000\na\n\n3\n00:00:03,000 --> 00:00:04,000\nb\n",
    "1\n00:00:01,000 --> 00:00:02,000\na\n\n2\n00:00:01,500 --> 00:00:04,000\nb\n",
    "1\n00:00:02,000 --> 00:00:01,000\na\n",
    "1\n0:00:01.000 --> 00:00:02,000\na\n",
])
def test_srt_validator_rejects(bad):
    with pytest.raises(SubtitleError):
        validate_srt(bad)


def test_vtt_validator_rejects_missing_header():
    with pytest.raises(SubtitleError):
        validate_vtt("00:00:01.000 --> 00:00:02.000\na\n")


def test_sentences_split_at_marks_and_limits():
    words = [TimedWord(c, i * 200, i * 200 + 180, "，" if i == 9 else "") for i, c in
             enumerate("一二三四五六七八九十" * 4)]
    words[-1] = TimedWord("十", words[-1].start_ms, words[-1].end_ms, "。")
    sents = build_sentences(words)
    assert all(len(s.text) <= 25 for s in sents)
    assert sents[0].text.endswith("，")  # the first split is at the comma
    assert "".join(s.text for s in sents).replace("，", "").replace("。", "") == "一二三四五六七八九十" * 4
    assert sents[0].start_ms == 0 and sents[-1].end_ms == words[-1].end_ms


def test_bpe_pieces_join_into_words_with_offset():
    words = words_from_tokens(["你", "hel@@", "lo", "ok"], [[0, 100], [100, 200], [200, 300], [300, 400]], 5000)
    assert [w.text for w in words] == ["你", "hello", "ok"]
    assert (words[1].start_ms, words[1].end_ms) == (5100, 5300)
    assert build_sentences(words)[0].text == "你hello ok"


def test_paragraphs_per_speaker():
    sents = [Sentence("甲说。", 0, 1, "A"), Sentence("还是甲。", 1, 2, "A"), Sentence("乙说。", 2, 3, "B")]
    assert to_paragraphs(sents) == "A: 甲说。还是甲。\n\nB: 乙说。\n"


@pytest.fixture(scope="module")
def punc_dir(tmp_path_factory):
    vocab = sorted({c for s in SENTENCES for c in s if not c.isascii()})
    return make_punc_model_dir(tmp_path_factory.mktemp("punc"), vocab, seed=0)


@pytest.fixture(scope="module")
def punctuator(punc_dir):
    return Punctuator(punc_dir)


def test_punctuation_batched_equals_single_and_funasr(punctuator):
    texts = [s.replace("，", "") for s in SENTENCES] + ["".join(SENTENCES).replace("，", "") * 3]
    words = [split_words(t) for t in texts]
    batched = punctuator.predict(words)
    assert batched == [punctuator.predict([w])[0] for w in words]
    assert all(m in {"", "，", "。", "？", "、"} for ms in batched for m in ms)
    assert "<unk>" not in "".join(punctuator.punctuate(texts))
    # Same marks as funasr's own CTTransformer.inference on a text of one 20-word piece.
    ours = punctuator.punctuate([texts[2]])[0]
    theirs = punctuator._model.inference([texts[2]], key=["k"], tokenizer=punctuator._tokenizer,
                                         device="cpu")[0][0]["text"]
    assert ours == theirs


@dataclass(frozen=True)
class _FakeTranscript:
    text: str
    tokens: list[str]
    timestamps: list[tuple[int, int]]


class _MarkerEngine:
    """Stand-in for pure timeline mapping: one token per clip spanning its audible part."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list]] = []

    def transcribe(self, audios, hotwords):
        self.calls.append((len(audios), hotwords))
        out = []
        for a in audios:
            loud = np.nonzero(np.abs(a) > 0.05)[0]
            ms = (int(loud[0] * 1000 / SR), int(loud[-1] * 1000 / SR))
            out.append(_FakeTranscript("字", ["字"], [ms]))
        return out

    def info(self):
        return {}


def _settings(**longform):
    return load_settings(None, engine={"device": "cpu"}, longform={"punc_model": None, **longform})


def test_timeline_maps_back_to_known_positions():
    require_espeak()
    rec = recording(SENTENCES[:6], [2.0, 1.2], noise=0.002)
    engine = _MarkerEngine()
    # No merging of neighbouring regions: each sentence is its own segment.
    settings = _settings(min_segment_s=0, merge_gap_s=0)
    options = Options(hotwords=("会议",), vad=True, punctuation=False)
    (result,) = transcribe_files(settings, engine, [_wav(rec.audio)], options)
    assert all(h == ["会议"] for _, hw in engine.calls for h in hw)
    assert len(result.segments) == len(rec.spans) == len(result.tokens)
    for token, (start, end) in zip(result.tokens, rec.spans):
        assert abs(token.start_ms - start * 1000 // SR) <= 60
        assert abs(token.end_ms - end * 1000 // SR) <= 60
    assert validate_srt(render(result, "srt")) == len(result.sentences)
    assert result.duration_ms == len(rec.audio) * 1000 // SR


def test_files_share_engine_calls_with_per_file_hotwords():
    """Segments of two recordings in flight together are batched by the scheduler into shared
    engine calls, each item with its own file's hotwords."""
    require_espeak()
    a = recording(SENTENCES[:2], [1.5])
    b = recording(SENTENCES[2:5], [1.5])
    engine = _MarkerEngine()
    settings = load_settings(None, engine={"device": "cpu", "max_batch_size": 64},
                             server={"batch_wait_ms": 500}, longform={"punc_model": None})

    async def run():
        from asr.pipeline.pipeline import Pipeline

        pipeline = Pipeline(settings, engine)
        await pipeline.start()
        try:
            return await asyncio.gather(
                pipeline.transcribe(_wav(a.audio), Options(hotwords=("甲",), vad=True)),
                pipeline.transcribe(_wav(b.audio), Options(hotwords=("乙",), vad=True)),
            )
        finally:
            await pipeline.stop()

    res_a, res_b = asyncio.run(run())
    items = [tuple(h) for _, hw in engine.calls for h in hw]
    assert sorted(items) == sorted([("甲",)] * len(res_a.segments) + [("乙",)] * len(res_b.segments))
    assert any({("甲",), ("乙",)} <= {tuple(h) for h in hw} for _, hw in engine.calls)  # shared calls
    assert res_b.segments[-1].end_ms <= len(b.audio) * 1000 // SR


def test_real_engine_and_punctuation_wiring(tiny_model_dir, engine, punc_dir):
    """The project's tiny random-weight model: text is noise, but every piece must fit together."""
    require_espeak()
    rec = recording(SENTENCES[:4], [1.5, 0.8])
    settings = load_settings(None, engine={"model": str(tiny_model_dir), "device": "cpu"},
                             longform={"punc_model": str(punc_dir)})
    (result,) = transcribe_files(settings, engine, [_wav(rec.audio)], Options(vad=True))
    assert result.segments and result.applied.punctuation and result.tokens
    for token in result.tokens:  # token times land inside a segment on the file's timeline
        assert any(seg.start_ms <= token.start_ms <= token.end_ms <= seg.end_ms for seg in result.segments)
    assert result.sentences, "the tiny model yields tokens for this recording; sentences must follow"
    assert validate_srt(render(result, "srt")) == len(result.sentences)
    assert validate_vtt(render(result, "vtt")) == len(result.sentences)
    assert result.text.endswith(("。", ".", "？", "?", "！", "!"))


def _wav(audio) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _join_words_reference(words) -> str:
    """The straightforward join (a word at a time), which build_sentences's running width follows."""
    out, prev_ascii = "", False
    for w in words:
        is_ascii = w.text.isascii()
        if is_ascii and prev_ascii:
            out += " "
        out += w.text
        mark = w.punc
        if mark and is_ascii and any(c.isalpha() for c in w.text):
            mark = {"，": ",", "。": ".", "？": "?", "、": ","}.get(mark, mark)
        out += mark
        prev_ascii = is_ascii and not mark
    return out


_WORDS = st.builds(
    TimedWord,
    st.sampled_from(["你", "好", "hello", "GPU", "ok", "达摩院", "x", "3.5", "2026", "5%"]),
    st.just(0),
    st.just(10),
    st.sampled_from(["", "", "，", "。", "？", "、", "!"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=30))
def test_join_and_running_width_follow_the_reference(words) -> None:
    from asr.pipeline.subtitles import _joined, _width

    assert join_words(words) == _join_words_reference(words)
    width = 0.0
    for i, w in enumerate(words):
        width += _width(_joined(words[i - 1] if i else None, w))
        assert width == _width(_join_words_reference(words[: i + 1]))
