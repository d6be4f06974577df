"""Sentences on the file's timeline, and the SRT / VTT / text writers (pure Python).

The engine gives per-token [start_ms, end_ms] relative to each segment; the pipeline shifts them by
the segment offset and hands `TimedWord`s here. Cues are built so that players accept them: they
never overlap, never run backwards, always last at least a moment and are never empty.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from asr.errors import SubtitleError

_SENTENCE_END = frozenset("。？！?!.")
_PAUSE = frozenset("，、；：,;:")
_MARKS = _SENTENCE_END | _PAUSE | frozenset("！；")



@dataclass(frozen=True)
class TimedWord:
    """A word (a CJK character or an English word) with its time in the file and the mark after it."""

    text: str
    start_ms: int
    end_ms: int
    punc: str = ""
    speaker: str | None = None


@dataclass(frozen=True)
class Sentence:
    """A readable piece of text with its time span in the original file."""

    text: str
    start_ms: int
    end_ms: int
    speaker: str | None = None


@dataclass(frozen=True)
class SubtitleOptions:
    """Readability limits for one cue."""

    max_chars: int = 24  # CJK characters per cue (an ASCII letter counts half)
    max_duration_ms: int = 7000
    min_duration_ms: int = 500  # a cue is shown at least this long when the next allows it
    # A silence this long starts a new cue even without a mark: a cue should not stay on screen
    # over a pause between sentences. 800: on the demonstration model's 10-minute recording (pauses
    # of 0.7-1.6 s, a weak punctuation model) 91% of cue starts fell within 0.6 s of a spoken
    # sentence's start, against 68% at 1500 (161 and 127 cues for 149 sentences).
    split_gap_ms: int = 800


def words_from_tokens(
    tokens: Sequence[str], timestamps: Sequence[Sequence[int]], offset_ms: int = 0, end_ms: int | None = None
) -> list[TimedWord]:
    """Merge engine tokens into words on the file's timeline.

    BPE pieces ending in "@@" are joined to the next piece; a token of punctuation only becomes
    the mark after the word before it; every other token is one word. With `end_ms` (the end of
    the segment on the file's timeline) times past it (CIF rounding) are pulled back inside.
    """
    limit = end_ms if end_ms is not None else 1 << 62
    words: list[TimedWord] = []
    piece, start = "", None
    for token, (t_start, t_end) in zip(tokens, timestamps):
        if start is None:
            start = int(t_start)
        if token.endswith("@@"):
            piece += token[:-2]
            continue
        text = piece + token
        end = min(int(t_end) + offset_ms, limit)
        if words and not piece and text and text[0] in _MARKS and all(ch in _MARKS for ch in text):
            # A punctuation token (a model that emits marks) is the mark of the word before it.
            last = words[-1]
            words[-1] = TimedWord(last.text, last.start_ms, max(last.end_ms, end), last.punc + text, last.speaker)
        else:
            begin = min(start + offset_ms, limit)
            words.append(TimedWord(text, begin, max(end, begin)))
        piece, start = "", None
    if piece and start is not None:
        end = min(int(timestamps[len(tokens) - 1][1]) + offset_ms if tokens else start + offset_ms, limit)
        begin = min(start + offset_ms, limit)
        words.append(TimedWord(piece, begin, max(end, begin)))
    return words


_ASCII_MARKS = {"，": ",", "。": ".", "？": "?", "、": ","}


def _joined(prev: TimedWord | None, w: TimedWord) -> str:
    """What `w` adds to `join_words` after `prev`: a space between ASCII words, the word, its mark."""
    if not w.text.isascii():
        return w.text + w.punc  # a CJK word (nearly all of them): no space, its own mark
    space = " " if prev is not None and prev.text.isascii() and not prev.punc else ""
    # An English word takes ASCII marks (hello,); digits that ITN wrote sit in Chinese text and keep
    # its marks (增长了3.5，然后), so only a word with a letter converts.
    latin = any(c.isalpha() for c in w.text)
    mark = _ASCII_MARKS.get(w.punc, w.punc) if w.punc and latin else w.punc
    return space + w.text + mark


def join_words(words: Sequence[TimedWord]) -> str:
    """Text the funasr way: CJK without spaces, ASCII words separated by one space."""
    return "".join(_joined(words[i - 1] if i else None, w) for i, w in enumerate(words))


def _width(text: str) -> float:
    """An ASCII character counts half (encoding to ASCII and dropping the rest counts them in C)."""
    return len(text) - 0.5 * len(text.encode("ascii", "ignore"))


def _joined_width(words: Sequence[TimedWord]) -> float:
    return _width(join_words(words))


def build_sentences(
    words: Sequence[TimedWord], opts: SubtitleOptions | None = None
) -> list[Sentence]:
    """Group words into sentences: at sentence marks, long pauses, speaker changes, and limits.

    When a piece grows past `max_chars` or `max_duration_ms` it is split at its last pause mark
    (a comma), or failing that before the word that breaks the limit.
    """
    return [s for s, _, _ in group_sentences(words, opts)]


def group_sentences(
    words: Sequence[TimedWord], opts: SubtitleOptions | None = None
) -> list[tuple[Sentence, int, int]]:
    """`build_sentences`, each sentence with the range [first, end) of the words it holds."""
    opts = opts or SubtitleOptions()
    sentences: list[tuple[Sentence, int, int]] = []
    current: list[TimedWord] = []
    first = 0  # index of current[0] in `words`
    width = 0.0  # of join_words(current), kept as words come (recomputing it was quadratic)

    def flush(upto: int | None = None) -> None:
        nonlocal current, width, first
        take = current if upto is None else current[:upto]
        rest = [] if upto is None else current[upto:]
        text = join_words(take).strip()
        if take and text:
            sentences.append((Sentence(text, take[0].start_ms, take[-1].end_ms, take[0].speaker),
                              first, first + len(take)))
        first += len(take)
        current = rest
        width = _joined_width(rest)

    for w in words:
        if current and (
            w.start_ms - current[-1].end_ms >= opts.split_gap_ms or w.speaker != current[-1].speaker
        ):
            flush()
        width += _width(_joined(current[-1] if current else None, w))
        current.append(w)
        while current and (
            width > opts.max_chars
            or current[-1].end_ms - current[0].start_ms > opts.max_duration_ms
        ) and len(current) > 1:
            commas = [i for i, cw in enumerate(current[:-1]) if cw.punc in _PAUSE]
            flush(commas[-1] + 1 if commas else len(current) - 1)
        if w.punc in _SENTENCE_END:
            flush()
    flush()
    return sentences


def word_offsets(words: Sequence[TimedWord]) -> list[int]:
    """Where each word's text starts in `join_words(words)`."""
    offsets, pos = [], 0
    for i, w in enumerate(words):
        piece = _joined(words[i - 1] if i else None, w)
        offsets.append(pos + (len(piece) - len(w.text) - len(w.punc)))
        pos += len(piece)
    return offsets


def sentence_offsets(sentences: Sequence[Sentence]) -> list[int]:
    """Where each sentence's text starts in `to_text(sentences)`."""
    offsets, out_last, pos = [], "", 0
    for s in sentences:
        if pos and out_last.isascii() and s.text[:1].isascii():
            pos += 1
        offsets.append(pos)
        pos += len(s.text)
        out_last = s.text[-1:] or out_last
    return offsets


def _cue_times(
    sentences: Sequence[Sentence], min_ms: int, until_ms: int | None = None
) -> list[tuple[int, int]]:
    """Monotonic, non-overlapping, non-empty [start, end) times for each cue; with `until_ms`
    (the file's length) the minimum display time never carries a cue past the end of the file."""
    times: list[tuple[int, int]] = []
    prev_end = 0
    for i, s in enumerate(sentences):
        start = max(int(s.start_ms), prev_end, 0)
        end = max(int(s.end_ms), start + min_ms)
        if i + 1 < len(sentences):
            nxt = max(int(sentences[i + 1].start_ms), start + 1)
            end = min(end, nxt)
        elif until_ms is not None:
            end = min(end, max(int(until_ms), int(s.end_ms)))
        end = max(end, start + 1)
        times.append((start, end))
        prev_end = end
    return times


def format_timestamp(ms: int, sep: str = ",") -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (VTT, sep='.')."""
    ms = max(0, int(ms))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, milli = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{milli:03d}"


def _cue_text(s: Sentence, speakers: bool) -> str:
    text = " ".join(s.text.split())  # a blank line inside a cue would end it early
    return f"{s.speaker}: {text}" if speakers and s.speaker else text


def to_srt(
    sentences: Sequence[Sentence], speakers: bool = False, min_duration_ms: int = 500,
    until_ms: int | None = None,
) -> str:
    """SubRip text; empty sentences are dropped. `until_ms`: the file's length (cues end by it)."""
    kept = [s for s in sentences if s.text.strip()]
    blocks = []
    for n, (s, (start, end)) in enumerate(zip(kept, _cue_times(kept, min_duration_ms, until_ms)), 1):
        blocks.append(f"{n}\n{format_timestamp(start)} --> {format_timestamp(end)}\n"
                      f"{_cue_text(s, speakers)}\n")
    return "\n".join(blocks)


def to_vtt(
    sentences: Sequence[Sentence], speakers: bool = False, min_duration_ms: int = 500,
    until_ms: int | None = None,
) -> str:
    """WebVTT text; speakers become voice tags (<v Name>). `until_ms` as in `to_srt`."""
    kept = [s for s in sentences if s.text.strip()]
    blocks = ["WEBVTT\n"]
    for s, (start, end) in zip(kept, _cue_times(kept, min_duration_ms, until_ms)):
        text = " ".join(s.text.split()).replace("-->", "->")
        if speakers and s.speaker:
            text = f"<v {s.speaker}>{text}"
        blocks.append(f"{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}\n{text}\n")
    return "\n".join(blocks)


def to_text(sentences: Sequence[Sentence]) -> str:
    """Plain text: sentences run on, with a space only between ASCII on both sides (as
    `join_words` spaces English words), so unpunctuated text reads as the engine's."""
    out = ""
    for s in sentences:
        if out and out[-1].isascii() and s.text[:1].isascii():
            out += " "
        out += s.text
    return out + ("\n" if out else "")


def to_paragraphs(sentences: Sequence[Sentence], speakers: bool = True) -> str:
    """One paragraph per speaker turn ("Speaker: text"), blank line between paragraphs."""
    paras: list[tuple[str | None, list[Sentence]]] = []
    for s in sentences:
        if paras and paras[-1][0] == s.speaker:
            paras[-1][1].append(s)
        else:
            paras.append((s.speaker, [s]))
    out = []
    for speaker, group in paras:
        text = to_text(group).strip()
        out.append(f"{speaker}: {text}" if speakers and speaker else text)
    return "\n\n".join(out) + ("\n" if out else "")


_SRT_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d),(\d{3})"
_VTT_TIME = r"(?:(\d{2,}):)?([0-5]\d):([0-5]\d)\.(\d{3})"


def _ms(match: tuple[str | None, ...]) -> int:
    h, m, s, milli = (int(x) if x else 0 for x in match)
    return ((h * 60 + m) * 60 + s) * 1000 + milli


def _check_cues(cues: list[tuple[int, int, str]], where: str) -> None:
    prev_end = -1
    for i, (start, end, text) in enumerate(cues, 1):
        if end <= start:
            raise SubtitleError(f"{where}: cue {i} ends before it starts.")
        if start < prev_end:
            raise SubtitleError(f"{where}: cue {i} overlaps or runs before the previous cue.")
        if not text.strip():
            raise SubtitleError(f"{where}: cue {i} has no text.")
        prev_end = end


def validate_srt(text: str) -> int:
    """Check an SRT document (numbering from 1, time format, order, overlaps, text).

    Returns the number of cues; raises SubtitleError with the first problem found.
    """
    blocks = [b for b in re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip()) if b.strip()]
    cues = []
    for n, block in enumerate(blocks, 1):
        lines = block.split("\n")
        if lines[0].strip() != str(n):
            raise SubtitleError(f"SRT: cue {n} is numbered '{lines[0].strip()}'.")
        if len(lines) < 3:
            raise SubtitleError(f"SRT: cue {n} needs a time line and text.")
        m = re.fullmatch(rf"{_SRT_TIME} --> {_SRT_TIME}", lines[1].strip())
        if not m:
            raise SubtitleError(f"SRT: cue {n} has a malformed time line '{lines[1]}'.")
        cues.append((_ms(m.groups()[:4]), _ms(m.groups()[4:]), "\n".join(lines[2:])))
    _check_cues(cues, "SRT")
    return len(cues)


def validate_vtt(text: str) -> int:
    """Check a WebVTT document (header, time format, order, overlaps, text). Returns cue count."""
    text = text.replace("\r\n", "\n")
    if not re.match(r"WEBVTT(?:[ \t][^\n]*)?\n", text + "\n"):
        raise SubtitleError("VTT: the file must start with 'WEBVTT'.")
    blocks = [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()][1:]
    cues = []
    for n, block in enumerate(blocks, 1):
        lines = block.split("\n")
        if "-->" not in lines[0]:
            if len(lines) < 2 or lines[0].startswith("NOTE"):
                continue
            lines = lines[1:]  # a cue identifier
        m = re.fullmatch(rf"{_VTT_TIME} --> {_VTT_TIME}(?:[ \t].*)?", lines[0].strip())
        if not m:
            raise SubtitleError(f"VTT: cue {n} has a malformed time line '{lines[0]}'.")
        if len(lines) < 2:
            raise SubtitleError(f"VTT: cue {n} has no text.")
        cues.append((_ms(m.groups()[:4]), _ms(m.groups()[4:]), "\n".join(lines[1:])))
    _check_cues(cues, "VTT")
    return len(cues)
