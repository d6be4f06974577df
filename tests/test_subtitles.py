"""Sentences, subtitle cues and their writers (asr/pipeline/subtitles.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
        text = _join_words_reference(words[: i + 1])
        assert width == _width(text) == sum(0.5 if ch.isascii() else 1.0 for ch in text)

