"""Output formats built from a transcription result: plain text, SRT, WebVTT, JSON.

Works on plain data (tokens with [start_ms, end_ms] timestamps) so the web layer, the job
store's saved results and a command line tool all render the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# A subtitle cue ends after sentence punctuation, at a pause, or when it grows too long to read.
_SENTENCE_END = set("。！？!?；;…")
_PAUSE_MS = 600
_MAX_CUE_CHARS = 24
_MAX_CUE_MS = 7000


@dataclass(frozen=True)
class Segment:
    """One subtitle cue. Times in seconds."""

    id: int
    start: float
    end: float
    text: str


def join_tokens(tokens: Sequence[str]) -> str:
    """Join tokens the way the model's text is joined: CJK without spaces, English words spaced.

    Subword pieces ending in ``@@`` continue into the next token without a space.
    """
    out: list[str] = []
    prev_word = False  # previous token was (the end of) a Latin word
    glue = False  # previous token was a "@@" continuation piece
    for tok in tokens:
        piece = tok[:-2] if tok.endswith("@@") else tok
        is_word = piece.isascii() and any(c.isalnum() for c in piece)
        if is_word and prev_word and not glue:
            out.append(" ")
        out.append(piece)
        glue = tok.endswith("@@")
        prev_word = is_word
    return "".join(out)


def make_segments(
    tokens: Sequence[str], timestamps: Sequence[Sequence[int]], *, text: str, duration_s: float
) -> list[Segment]:
    """Group timed tokens into readable cues; without timestamps the whole text is one cue."""
    if not tokens or len(timestamps) != len(tokens):
        return [Segment(0, 0.0, round(duration_s, 3), text)] if text else []
    segments: list[Segment] = []
    start = 0
    for i in range(len(tokens)):
        last = i == len(tokens) - 1
        cut = last
        if not last:
            gap = timestamps[i + 1][0] - timestamps[i][1]
            span = timestamps[i][1] - timestamps[start][0]
            cut = (
                tokens[i][-1:] in _SENTENCE_END
                or gap >= _PAUSE_MS
                or i - start + 1 >= _MAX_CUE_CHARS
                or span >= _MAX_CUE_MS
            )
        if cut:
            segments.append(
                Segment(
                    len(segments),
                    timestamps[start][0] / 1000.0,
                    timestamps[i][1] / 1000.0,
                    join_tokens(tokens[start : i + 1]),
                )
            )
            start = i + 1
    return segments


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip subtitles (cues numbered from 1)."""
    return "".join(
        f"{n}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
        for n, s in enumerate(segments, 1)
    )


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT subtitles."""
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n" for s in segments
    )


def segments_as_dicts(segments: Sequence[Segment]) -> list[dict[str, Any]]:
    return [asdict(s) for s in segments]


def to_json(result: dict[str, Any]) -> str:
    """Pretty JSON with Chinese kept readable."""
    return json.dumps(result, ensure_ascii=False, indent=2)


def render(result: dict[str, Any], fmt: str) -> str:
    """Render a service result (see ``asr.server.service.TranscriptionResult``) as txt/srt/vtt/json."""
    segments = [Segment(**s) for s in result.get("segments", [])]
    if fmt == "txt":
        return result["text"] + "\n"
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "json":
        return to_json(result)
    raise ValueError(f"Unknown output format {fmt!r}; use txt, srt, vtt or json.")
