"""Hotwords: parse what users type, enforce limits, and turn words into token ids ourselves.

We never hand user text to funasr as a hotword string: funasr reads an existing `.txt` path from
the server's disk and downloads a URL it is given. Tokenisation follows the SeACo recipe: a word
found in seg_dict maps to its pieces; a word of CJK characters and digits maps character by
character; anything else becomes <unk>.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from asr.errors import HotwordError, LimitError

_CJK_OR_DIGITS = re.compile(r"^[\u4E00-\u9FA50-9]+$")
_SEPARATORS = re.compile(r"[\s,，;；、]+")

HotwordList = tuple[str, ...]

# Longest hotword text accepted, in characters, checked before any splitting: the same 1 MB that
# the web forms allow per field (asr.web.limits), so no door parses more than the others.
MAX_HOTWORD_TEXT = 1 << 20


def parse_hotwords(
    text: str | Iterable[str] | None,
    *,
    max_count: int = 1000,
    max_chars: int = 32,
    count_setting: str = "limits.max_hotwords",
    what: str = "hotwords",
) -> HotwordList:
    """Split user input (one per line, or separated by spaces/commas) into a clean, de-duplicated
    tuple, keeping order. Raises HotwordError naming the limit that was broken and its setting
    (`count_setting` for the count, `limits.max_hotword_chars` for a word's length), LimitError
    for text over MAX_HOTWORD_TEXT characters (refused before it is split)."""
    if text is None:
        return ()
    items = [text] if isinstance(text, str) else [str(item) for item in text]
    size = sum(map(len, items))
    if size > MAX_HOTWORD_TEXT:
        raise LimitError(
            f"The hotword text has {size:,} characters; at most {MAX_HOTWORD_TEXT:,} (1 MB) are read."
        )
    raw = [w for item in items for w in _SEPARATORS.split(item)]
    words: list[str] = []
    seen: set[str] = set()
    for word in raw:
        word = word.strip()
        if not word or word in seen:
            continue
        if "\x00" in word:
            raise HotwordError("Hotwords must not contain NUL characters.")
        if len(word) > max_chars:
            raise HotwordError(
                f"The hotword '{word[:20]}…' has {len(word)} characters; the limit is {max_chars} "
                "(limits.max_hotword_chars)."
            )
        seen.add(word)
        words.append(word)
        if len(words) > max_count:
            raise HotwordError(f"Too many {what}: the limit is {max_count} ({count_setting}).")
    return tuple(words)


_ASCII_WORD = re.compile(r"[A-Za-z0-9]")


@functools.lru_cache(maxsize=256)
def phrase_pattern(phrases: tuple[str, ...], ignore_case: bool = False) -> re.Pattern[str]:
    """One regex finding any of `phrases`, the longest first where several start at one place.

    A phrase that begins or ends with a Latin letter or digit only matches at a word edge there
    (AI is not found inside SAID). Compiled once per distinct list (requests repeat their sets).
    """
    alternatives = []
    for phrase in sorted(set(phrases), key=len, reverse=True):
        head = r"(?<![A-Za-z0-9])" if _ASCII_WORD.match(phrase[:1]) else ""
        tail = r"(?![A-Za-z0-9])" if _ASCII_WORD.match(phrase[-1:]) else ""
        alternatives.append(head + re.escape(phrase) + tail)
    return re.compile("|".join(alternatives) or r"(?!)", re.IGNORECASE if ignore_case else 0)


def find_hotwords(text: str, words: Sequence[str]) -> list[tuple[str, int, int]]:
    """(hotword, start, end) of every place `text` holds one of `words`, left to right, never
    overlapping; Latin letters match in any case (the recogniser lower-cases hotwords)."""
    if not words or not text:
        return []
    canonical = {w.casefold(): w for w in reversed(words)}
    return [(canonical.get(m.group().casefold(), m.group()), m.start(), m.end())
            for m in phrase_pattern(tuple(words), ignore_case=True).finditer(text)]


class HotwordTokenizer:
    """Maps hotwords to the token-id lists the SeACo bias encoder takes."""

    def __init__(self, token_list: Sequence[str], seg_dict: dict[str, list[str]], sos_id: int) -> None:
        self._ids = {tok: i for i, tok in enumerate(token_list)}
        self._unk = self._ids.get("<unk>", len(token_list) - 1)
        self._seg = seg_dict
        self.sos_id = sos_id

    def pieces(self, word: str) -> list[str]:
        word = word.lower()
        if word in self._seg:
            return list(self._seg[word])
        if self._seg and _CJK_OR_DIGITS.match(word):
            return [" ".join(self._seg[c]) if c in self._seg else "<unk>" for c in word]
        if not self._seg:
            return list(word)
        return ["<unk>"]

    def encode(self, words: HotwordList) -> list[list[int]]:
        """Token ids per word, then the closing [<s>] entry SeACo uses as the 'no bias' choice."""
        out = []
        for word in words:
            pieces = [p for piece in self.pieces(word) for p in piece.split()]
            out.append([self._ids.get(p, self._unk) for p in pieces])
        out.append([self.sos_id])
        return out
