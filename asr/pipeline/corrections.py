"""The correction dictionary: 错词 -> 正词 after recognition, times kept.

A hotword set may carry corrections for what the recogniser keeps getting wrong (阿里爸爸 ->
阿里巴巴, 通易千问 -> 通义千问). They run after ITN, on the text as users read it: an entry is
written against what a result shows (digits included: 3D打印机 is matched as written), and its
right side is never rewritten by a later stage. Matching is exact (Latin letters too), longest
entry first, left to right, in one pass (a replacement is never corrected again), and never across
a punctuation mark or two speakers. The replaced words keep their times (`asr.pipeline.rewrite`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asr.pipeline.hotwords import phrase_pattern
from asr.pipeline.rewrite import apply_edits, joined_with_offsets
from asr.pipeline.subtitles import TimedWord

CorrectionList = tuple[tuple[str, str], ...]
"""(wrong, right) pairs, each wrong form once."""


@dataclass(frozen=True)
class _Replace:
    start: int
    end: int
    text: str
    wrong: str


@dataclass(frozen=True)
class Applied:
    """One replacement made: `wrong` became `right`, which is output word `word` from character
    `offset` of its text."""

    wrong: str
    right: str
    word: int
    offset: int


def correct(words: Sequence[TimedWord], corrections: CorrectionList) -> tuple[list[TimedWord], list[Applied]]:
    """Apply the dictionary to timed words; returns the words and the replacements made."""
    if not corrections or not words:
        return list(words), []
    table = dict(corrections)
    joined = joined_with_offsets(words)
    found = [_Replace(m.start(), m.end(), table[m.group()], m.group())
             for m in phrase_pattern(tuple(table)).finditer(joined[0])]
    if not found:
        return list(words), []
    out, placed = apply_edits(words, found, joined)
    return out, [Applied(found[p.edit].wrong, found[p.edit].text, p.word, p.offset) for p in placed]


__all__ = ["Applied", "CorrectionList", "correct"]
