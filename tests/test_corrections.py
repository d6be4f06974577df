"""The correction dictionary (asr/pipeline/corrections.py) and the span mapping it shares with ITN
(asr/pipeline/rewrite.py): what is replaced, what is left alone, and the times the new text takes."""

from __future__ import annotations

from asr.pipeline.corrections import correct
from asr.pipeline.hotwords import find_hotwords
from asr.pipeline.rewrite import apply_edits, joined_with_offsets
from asr.pipeline.subtitles import TimedWord, join_words


def _chars(text: str, step: int = 100, punc: dict[int, str] | None = None) -> list[TimedWord]:
    """One word per character, `step` ms each; `punc` puts a mark after character i."""
    punc = punc or {}
    return [TimedWord(c, i * step, i * step + step - 10, punc.get(i, "")) for i, c in enumerate(text)]


def test_a_wrong_word_becomes_the_right_one_with_its_time() -> None:
    words = _chars("我在用通易千文写代码")
    out, applied = correct(words, (("通易千文", "通义千问"),))
    assert join_words(out) == "我在用通义千问写代码"
    fixed = next(w for w in out if w.text == "通义千问")
    assert (fixed.start_ms, fixed.end_ms) == (300, 690)  # first wrong character's start, last one's end
    assert [w.text for w in out[:3]] == ["我", "在", "用"] and out[:3] == words[:3]  # untouched words stay
    assert [(a.wrong, a.right, out[a.word].text, a.offset) for a in applied] == [
        ("通易千文", "通义千问", "通义千问", 0),
    ]


def test_longest_entry_first_one_pass_and_every_occurrence() -> None:
    table = (("阿里", "阿狸"), ("阿里爸爸", "阿里巴巴"), ("阿里巴巴", "never again"))
    out, applied = correct(_chars("阿里爸爸和阿里爸爸还有阿里"), table)
    # The longer entry wins where both match; the replacement is not corrected again.
    assert join_words(out) == "阿里巴巴和阿里巴巴还有阿狸"
    assert [a.wrong for a in applied] == ["阿里爸爸", "阿里爸爸", "阿里"]


def test_never_across_a_mark_or_two_speakers() -> None:
    # 阿里，爸爸 is not 阿里爸爸: the comma sits between them in the text.
    words = _chars("阿里爸爸", punc={1: "，"})
    assert correct(words, (("阿里爸爸", "阿里巴巴"),))[0] == words
    two = [TimedWord("阿", 0, 90, speaker="A"), TimedWord("里", 100, 190, speaker="B")]
    assert correct(two, (("阿里", "X"),))[0] == two


def test_latin_entries_match_whole_words_only() -> None:
    words = [TimedWord(w, i * 300, i * 300 + 250) for i, w in enumerate(["open", "ai", "said", "hi"])]
    out, _ = correct(words, (("open ai", "OpenAI"), ("ai", "AI")))
    assert join_words(out) == "OpenAI said hi"  # 'ai' inside 'said' is not a word of its own
    assert (out[0].start_ms, out[0].end_ms) == (0, 550)


def test_a_wrong_form_inside_a_longer_word_is_replaced_in_place() -> None:
    # ITN writes 3D as one word; an entry may hold it. Part of a word is replaced in place: the
    # rest of the word and its time stay.
    words = [TimedWord("我", 0, 90), TimedWord("3D", 100, 390), TimedWord("达", 400, 490), TimedWord("印", 500, 590)]
    out, applied = correct(words, (("3D达印", "3D打印"),))
    assert join_words(out) == "我3D打印" and out[1] == TimedWord("3D打印", 100, 590)
    assert (applied[0].word, applied[0].offset) == (1, 0)
    out, applied = correct([TimedWord("通易千文", 0, 400, "。")], (("易千", "义千"),))
    assert out == [TimedWord("通义千文", 0, 400, "。")] and (applied[0].word, applied[0].offset) == (0, 1)
    # A Latin entry is a whole word: 'D达印' does not start inside '3D'.
    assert correct(words, (("D达印", "D打印"),))[0] == words


def test_no_dictionary_or_no_match_changes_nothing() -> None:
    words = _chars("今天天气很好")
    assert correct(words, ()) == (words, [])
    assert correct(words, (("明天", "后天"),)) == (words, [])


def test_edits_that_share_a_word_merge_into_one() -> None:
    words = [TimedWord("ab", 0, 100), TimedWord("cd", 100, 200)]
    joined = joined_with_offsets(words)
    assert joined == ("ab cd", [0, 3], [2, 5])

    class E:
        def __init__(self, start: int, end: int, text: str) -> None:
            self.start, self.end, self.text = start, end, text

    # Two edits in one word, then one across both words (the space between them included).
    out, placed = apply_edits(words, [E(0, 1, "A"), E(1, 2, "B")], joined)
    assert out == [TimedWord("AB", 0, 100), words[1]]
    assert [(p.edit, p.word, p.offset) for p in placed] == [(0, 0, 0), (1, 0, 1)]
    out, placed = apply_edits(words, [E(1, 4, "X")], joined)
    assert out == [TimedWord("aXd", 0, 200)] and [(p.word, p.offset) for p in placed] == [(0, 1)]


def test_hotwords_are_found_longest_first_in_any_latin_case() -> None:
    text = "北京大学的AI课在北京。said ai"
    assert find_hotwords(text, ["北京", "北京大学", "ai"]) == [
        ("北京大学", 0, 4), ("ai", 5, 7), ("北京", 9, 11), ("ai", 17, 19),
    ]
    assert find_hotwords(text, []) == [] and find_hotwords("", ["北京"]) == []
