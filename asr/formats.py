"""Output formats for one transcript: plain text, JSON, SRT and WebVTT.

Subtitle cues are built from the per-token timestamps: a cue ends at sentence punctuation, at a
long pause, or when it reaches a readable length, and cues never overlap or run backwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["txt", "json", "srt", "vtt"]
FORMATS: tuple[Format, ...] = ("txt", "json", "srt", "vtt")

_SENTENCE_END = set("。！？!?；;")
MAX_CUE_CHARS = 24
MAX_CUE_MS = 7000
PAUSE_MS = 800


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


def _joined(tokens: list[str]) -> str:
    out = ""
    for tok in tokens:
        if out and out[-1].isascii() and out[-1].isalnum() and tok[:1].isascii() and tok[:1].isalnum():
            out += " "
        out += tok
    return out


def build_cues(tokens: list[str], timestamps: list[tuple[int, int]], offset_ms: int = 0) -> list[Cue]:
    """Group timed tokens into subtitle cues (times shifted by `offset_ms`)."""
    cues: list[Cue] = []
    current: list[str] = []
    start = end = 0
    for tok, (s, e) in zip(tokens, timestamps):
        if current and (
            s - end >= PAUSE_MS or len(_joined(current)) >= MAX_CUE_CHARS or e - start > MAX_CUE_MS
        ):
            cues.append(Cue(start, end, _joined(current)))
            current = []
        if not current:
            start = s
        current.append(tok)
        end = max(e, start)
        if tok[-1:] in _SENTENCE_END:
            cues.append(Cue(start, end, _joined(current)))
            current = []
    if current:
        cues.append(Cue(start, end, _joined(current)))
    fixed: list[Cue] = []
    for cue in cues:
        begin = max(cue.start_ms, fixed[-1].end_ms if fixed else 0)
        fixed.append(Cue(begin + offset_ms, max(cue.end_ms, begin + 1) + offset_ms, cue.text))
    return fixed


def _clock(ms: int, sep: str) -> str:
    h, rest = divmod(max(ms, 0), 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(cues: list[Cue]) -> str:
    blocks = [
        f"{i}\n{_clock(c.start_ms, ',')} --> {_clock(c.end_ms, ',')}\n{c.text}\n"
        for i, c in enumerate(cues, 1)
    ]
    return "\n".join(blocks)


def to_vtt(cues: list[Cue]) -> str:
    blocks = [f"{_clock(c.start_ms, '.')} --> {_clock(c.end_ms, '.')}\n{c.text}\n" for c in cues]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(result: Any, fmt: Format, *, source: str | None = None) -> str:
    """Render a Transcript (or anything with text/tokens/timestamps/to_dict) in `fmt`."""
    if fmt == "txt":
        return result.text + "\n"
    if fmt == "json":
        payload = result.to_dict()
        if source is not None:
            payload = {"file": source, **payload}
        return json.dumps(payload, ensure_ascii=False, indent=1) + "\n"
    cues = build_cues(result.tokens, result.timestamps)
    if fmt == "srt":
        return to_srt(cues)
    if fmt == "vtt":
        return to_vtt(cues)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
