"""Inverse text normalization: the case table, timestamps of rewritten spans, threads, loading.

Speed is measured by benchmarks/itn_speed.py, not here.
"""

from __future__ import annotations

import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itn_cases import (
    CARDINALS,
    DATES,
    KNOWN_LIMITATIONS,
    POSITIVE,
    SENTENCES,
    UNCHANGED,
)

from asr.pipeline.subtitles import TimedWord, build_sentences, to_srt, validate_srt

pytest.importorskip("wetext", reason="ITN needs wetext (requirements.txt); without it the stage is unavailable")

from asr.pipeline.itn import InverseNormalizer, ITNUnavailableError, Rewrite  # noqa: E402


@pytest.fixture(scope="module")
def itn() -> InverseNormalizer:
    return InverseNormalizer()


def chars(text: str, step: int = 200, first: int = 0, punc: dict[int, str] | None = None) -> list[TimedWord]:
    """One word per character, `step` ms apart, each lasting step - 50 ms; `punc`: index -> mark."""
    punc = punc or {}
    return [TimedWord(ch, first + i * step, first + i * step + step - 50, punc.get(i, ""))
            for i, ch in enumerate(text)]


# -- the table ---------------------------------------------------------------------------------

def test_table_size() -> None:
    assert len(POSITIVE) + len(UNCHANGED) >= 150
    assert len(UNCHANGED) >= 40


@pytest.mark.parametrize(("spoken", "written"), POSITIVE, ids=[s for s, _ in POSITIVE])
def test_rewrites(itn: InverseNormalizer, spoken: str, written: str) -> None:
    assert itn.apply_text(spoken) == written


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(itn: InverseNormalizer, text: str) -> None:
    assert itn.apply_text(text) == text


@pytest.mark.xfail(strict=True, reason="wetext limitation, listed in docs/itn.md")
@pytest.mark.parametrize(("spoken", "written"), KNOWN_LIMITATIONS, ids=[s for s, _ in KNOWN_LIMITATIONS])
def test_known_limitations(itn: InverseNormalizer, spoken: str, written: str) -> None:
    assert itn.apply_text(spoken) == written


def test_written_text_is_left_alone(itn: InverseNormalizer) -> None:
    """Running ITN twice changes nothing more: digits, %, / and : are not spoken numbers."""
    for _, written in POSITIVE:
        assert itn.apply_text(written) == written


def test_marks_separate_numbers(itn: InverseNormalizer) -> None:
    assert itn.apply_text("三点，五个人") == "三点，五个人"
    assert itn.apply_text("三点五个人") == "3.5个人"


def test_cutting_at_non_token_characters_matches_whole_text_tagging(itn: InverseNormalizer) -> None:
    """The tagger sees only runs of characters a token can hold (speed); the result must be what
    tagging the whole text gives. Texts mix table rows with everyday words around them."""
    rng = random.Random(0)
    fillers = ["我觉得", "，然后", "。", "这是", "了吗？", "hello", " ", "他说", "大概", "左右", "的人"]
    rows = [s for s, _ in POSITIVE] + UNCHANGED
    texts = [s for s, _ in SENTENCES]
    for _ in range(300):
        texts.append("".join(rng.choice(rows) if rng.random() < 0.5 else rng.choice(fillers) for _ in range(4)))
    itn.load()
    for text in texts:
        whole = list(itn._rewrite_run(text.translate(str.maketrans("〇", "零"))))
        assert itn._grammar_rewrites(text) == whole, text


# -- timestamps --------------------------------------------------------------------------------

def test_rewritten_span_takes_the_union_of_its_source_times(itn: InverseNormalizer) -> None:
    words = chars("一百二十三", step=200, first=100)
    out = itn.apply(words)
    assert out == [TimedWord("123", 100, 100 + 4 * 200 + 150)]


def test_untouched_words_keep_their_times(itn: InverseNormalizer) -> None:
    words = chars("我有十二个苹果")
    out = itn.apply(words)
    assert [w.text for w in out] == ["我", "有", "12", "个", "苹", "果"]
    assert out[:2] == words[:2] and out[3:] == words[4:]
    assert (out[2].start_ms, out[2].end_ms) == (words[2].start_ms, words[3].end_ms)


def test_date_digits_replace_only_the_numbers(itn: InverseNormalizer) -> None:
    words = chars("二零二六年十二月一日")
    out = itn.apply(words)
    assert [w.text for w in out] == ["2026", "年", "12", "月", "1", "日"]
    assert (out[0].start_ms, out[0].end_ms) == (words[0].start_ms, words[3].end_ms)
    assert out[1] == words[4]  # 年 keeps its own time
    assert (out[2].start_ms, out[2].end_ms) == (words[5].start_ms, words[6].end_ms)
    assert out[4] == TimedWord("1", words[8].start_ms, words[8].end_ms)


def test_marks_stay_attached(itn: InverseNormalizer) -> None:
    words = chars("三点五然后百分之五", punc={2: "，", 8: "。"})
    out = itn.apply(words)
    assert [(w.text, w.punc) for w in out] == [("3.5", "，"), ("然", ""), ("后", ""), ("5%", "。")]
    assert out[0].end_ms == words[2].end_ms and out[-1].start_ms == words[5].start_ms


def test_a_mark_between_numbers_is_respected(itn: InverseNormalizer) -> None:
    words = chars("三点五个人", punc={1: "，"})  # 三点，五个人: 3 o'clock, five people
    assert itn.apply(words) == words


def test_english_words_and_spaces(itn: InverseNormalizer) -> None:
    words = [TimedWord("hello", 0, 300), TimedWord("world", 300, 600),
             *chars("一百二十", first=600)]
    out = itn.apply(words)
    assert out[:2] == words[:2]
    assert out[2] == TimedWord("120", 600, words[-1].end_ms)


def test_multi_character_words(itn: InverseNormalizer) -> None:
    # A word holding a whole expression keeps its time; a rewrite across words joins them.
    assert itn.apply([TimedWord("一百二十三个", 0, 900, "。")]) == [TimedWord("123个", 0, 900, "。")]
    words = [TimedWord("我有一百", 0, 400), TimedWord("二十个", 400, 700, "，"), TimedWord("好", 700, 800)]
    out = itn.apply(words)
    assert out == [TimedWord("我有120个", 0, 700, "，"), words[2]]


def test_speaker_turns_are_not_joined(itn: InverseNormalizer) -> None:
    words = [TimedWord("十", 0, 100, speaker="A"), TimedWord("二", 100, 200, speaker="B")]
    assert itn.apply(words) == words
    same = [TimedWord("十", 0, 100, speaker="A"), TimedWord("二", 100, 200, speaker="A")]
    assert itn.apply(same) == [TimedWord("12", 0, 200, speaker="A")]


def test_nothing_to_rewrite(itn: InverseNormalizer) -> None:
    assert itn.apply([]) == []
    words = chars("我们一起去吧", punc={5: "。"})
    assert itn.apply(words) == words


def test_subtitles_after_itn_keep_their_cue_times(itn: InverseNormalizer) -> None:
    text = "会议定在二零二六年十二月一日下午三点半开始大概有两百人参加"
    words = chars(text, punc={text.index("始"): "，", len(text) - 1: "。"})
    before = build_sentences(words)
    after = build_sentences(itn.apply(words))
    assert [(s.start_ms, s.end_ms) for s in after] == [(s.start_ms, s.end_ms) for s in before]
    assert "".join(s.text for s in after) == "会议定在2026年12月1日下午3点半开始，大概有200人参加。"
    assert validate_srt(to_srt(after)) == len(after)


_PIECES = list("零一二两三四五六七八九十百千万点年月日号分秒元块个人的我是了在，") + [
    "百分之", "公里", "下午", "一起", "十分", "hello", "GPU", "A", "三心二意"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(["", "", "", "，", "。"])), max_size=30))
def test_any_words_map_back_to_their_times(pieces: list[tuple[str, str]]) -> None:
    """For any words: the text is what ITN makes of the joined text, marks survive in order, and
    every output word spans a run of consecutive input words, from the first's start to the
    last's end, covering them all."""
    itn = _SHARED
    words = [TimedWord(text, i * 100, i * 100 + 80, punc) for i, (text, punc) in enumerate(pieces)]
    out = itn.apply(words)
    seen = "".join((" " if i and w.text.isascii() and words[i - 1].text.isascii() and not words[i - 1].punc else "")
                   + w.text + w.punc for i, w in enumerate(words))  # what ITN reads (join_words' spacing)
    assert "".join(w.text + w.punc for w in out).replace(" ", "") == itn.apply_text(seen).replace(" ", "")
    assert [w.punc for w in out if w.punc] == [w.punc for w in words if w.punc]
    i = 0
    for w in out:
        j = next(k for k in range(i, len(words)) if words[k].end_ms == w.end_ms)
        assert w.start_ms == words[i].start_ms
        assert w.punc == words[j].punc
        if j == i and w.text == words[i].text:
            assert w is words[i]
        i = j + 1
    assert i == len(words)


_SHARED = InverseNormalizer()


def test_hotwords_are_kept_as_names(itn: InverseNormalizer) -> None:
    assert itn.apply_text("他会七十二变，涨了百分之五") == "他会72变，涨了5%"
    assert itn.apply_text("他会七十二变，涨了百分之五", keep=["七十二变"]) == "他会七十二变，涨了5%"
    words = chars("学会七十二变要十二年")
    out = itn.apply(words, keep=["七十二变", ""])
    assert [w.text for w in out] == list("学会七十二变要") + ["12", "年"]
    assert itn.apply_text("两千块钱", keep=["块钱"]) == "2000块钱"  # a hotword without a numeral is no name of a number


def test_rewrites_report_source_offsets(itn: InverseNormalizer) -> None:
    assert itn.rewrites("我有十二个") == [Rewrite(2, 4, "12", 2, 5)]  # 十二个 is one measure token


# -- threads and loading -----------------------------------------------------------------------

def test_eight_threads_give_the_sequential_results() -> None:
    texts = [s for s, _ in POSITIVE] + UNCHANGED
    sequential = [InverseNormalizer().apply_text(t) for t in texts]
    shared = InverseNormalizer()  # not loaded yet: the threads race to load it too
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(shared.apply_text, texts * 8))
    assert threaded == sequential * 8

    words = [chars(s) for s, _ in CARDINALS + DATES]
    one = [shared.apply(w) for w in words]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(shared.apply, words * 8)) == one * 8


def test_import_does_not_load_the_library() -> None:
    code = "import sys, asr.pipeline.itn; print('wetext' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_missing_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from asr.pipeline import itn as itn_module

    monkeypatch.setitem(sys.modules, "wetext", None)  # import wetext now raises ImportError
    assert not itn_module.available()
    with pytest.raises(ITNUnavailableError, match="ITN unavailable") as err:
        InverseNormalizer().apply_text("一百")
    assert err.value.code == "itn_unavailable"


def test_text_after_itn_keeps_chinese_marks_after_digits(itn: InverseNormalizer) -> None:
    """join_words turns marks after English words into ASCII ones; after digits (ITN output inside
    Chinese text) the Chinese mark stays."""
    from asr.pipeline.subtitles import join_words

    words = chars("增长了三点五然后", punc={5: "，"})
    words += [TimedWord("hello", 2000, 2300, "，"), TimedWord("好", 2300, 2400)]
    assert join_words(itn.apply(words)) == "增长了3.5，然后hello,好"
