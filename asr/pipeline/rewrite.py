"""Text edits on timed words, times kept: the one span-mapping step that ITN and the correction
dictionary share.

A stage that rewrites text (一百 -> 100, 阿里爸爸 -> 阿里巴巴) finds its edits on the words joined as
`join_words` joins them (marks included, so an edit never reaches across a comma it cannot see)
and hands them here with their offsets in that text. `apply_edits` turns them back into words:
the words an edit touches become one word from the first one's start to the last one's end,
carrying the last one's mark; words no edit touches are returned as they are.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from asr.pipeline.subtitles import TimedWord


class Edit(Protocol):
    """Source characters [start, end) of the joined text become `text`."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class Placed:
    """Where an applied edit's new text landed: in output word `word`, from character `offset`."""

    edit: int
    """Index of the edit in the list given to `apply_edits`."""
    word: int
    offset: int


def joined_with_offsets(words: Sequence[TimedWord]) -> tuple[str, list[int], list[int]]:
    """Text as `join_words` builds it (marks kept as they are: an edit must see them), and where
    each word's text starts and ends in it; its mark follows the end."""
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    prev: TimedWord | None = None
    for w in words:
        if prev is not None and w.text.isascii() and prev.text.isascii() and not prev.punc:
            pieces.append(" ")
            pos += 1
        starts.append(pos)
        pos += len(w.text)
        ends.append(pos)
        pieces.append(w.text)
        pieces.append(w.punc)
        pos += len(w.punc)
        prev = w
    return "".join(pieces), starts, ends


def apply_edits(
    words: Sequence[TimedWord],
    edits: Sequence[Edit],
    joined: tuple[str, list[int], list[int]] | None = None,
) -> tuple[list[TimedWord], list[Placed]]:
    """Apply non-overlapping `edits` (in order, offsets into `joined_with_offsets(words)`'s text).

    An edit covering words i..j becomes one word from words[i].start_ms to words[j].end_ms
    carrying words[j].punc; edits that share a word merge into one word. An edit that would
    swallow a mark or join two speakers is skipped. Returns the words and, for each applied edit,
    where its new text is (`Placed`). `joined`: `joined_with_offsets(words)` if the caller has it.
    """
    text, starts, ends = joined if joined is not None else joined_with_offsets(words)
    # Words touched by one edit form one group; groups that share a word merge.
    groups: list[tuple[int, int, list[int]]] = []
    for n, e in enumerate(edits):
        first = bisect.bisect_right(ends, e.start)  # first word whose text ends after e.start
        last = bisect.bisect_left(starts, e.end) - 1  # last word whose text starts before e.end
        if first > last:
            continue
        swallows_mark = any(words[k].punc and ends[k] < e.end and e.start < ends[k] + len(words[k].punc)
                            for k in range(max(first - 1, 0), last + 1))
        if swallows_mark or len({words[k].speaker for k in range(first, last + 1)}) > 1:
            continue
        if groups and first <= groups[-1][1]:
            g_first, g_last, members = groups[-1]
            groups[-1] = (g_first, max(g_last, last), [*members, n])
        else:
            groups.append((first, last, [n]))
    if not groups:
        return list(words), []

    out: list[TimedWord] = []
    placed: list[Placed] = []
    done = 0
    for first, last, members in groups:
        out.extend(words[done:first])
        pieces, pos = [], starts[first]
        for n in members:
            e = edits[n]
            pieces.append(text[pos:e.start])
            placed.append(Placed(n, len(out), sum(map(len, pieces))))
            pieces.append(e.text)
            pos = e.end
        pieces.append(text[pos:ends[last]])
        out.append(replace(words[first], text="".join(pieces), end_ms=words[last].end_ms, punc=words[last].punc))
        done = last + 1
    out.extend(words[done:])
    return out, placed
