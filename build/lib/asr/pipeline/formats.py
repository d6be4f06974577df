"""Output formats for one transcript: plain text, JSON, SRT and WebVTT.

There is one way to make subtitles: words with times -> `asr.pipeline.subtitles.build_sentences` (cues end
at sentence marks, long pauses, speaker changes or a readable length) -> `asr.pipeline.subtitles.to_srt` /
`to_vtt` (cues never overlap, run backwards or outlast the file). A short transcript's tokens
become words here; a long recording (`asr.pipeline.longform.LongTranscript`) already carries its sentences.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from asr.pipeline.subtitles import (
    Sentence,
    build_sentences,
    to_paragraphs,
    to_srt,
    to_vtt,
    words_from_tokens,
)

Format = Literal["txt", "json", "srt", "vtt"]
FORMATS: tuple[Format, ...] = ("txt", "json", "srt", "vtt")


def sentences_of(result: Any) -> list[Sentence]:
    """The subtitle sentences of an engine `Transcript` or a `LongTranscript`."""
    sentences = getattr(result, "sentences", None)
    if sentences is not None:
        return list(sentences)
    tokens = list(result.tokens or [])
    stamps = list(result.timestamps or [])
    if tokens and len(stamps) == len(tokens):
        return build_sentences(words_from_tokens(tokens, stamps))
    text = result.text.strip()
    return [Sentence(text, 0, max(1, round(result.duration_s * 1000)))] if text else []


def sentences_from_dict(result: Mapping[str, Any]) -> list[Sentence]:
    """Sentences of a stored JSON result (the service's `sentences`, else its `segments`)."""
    if "sentences" in result:
        return [Sentence(s["text"], int(s["start_ms"]), int(s["end_ms"]), s.get("speaker"))
                for s in result["sentences"]]
    return [Sentence(s["text"], round(s["start"] * 1000), round(s["end"] * 1000), s.get("speaker"))
            for s in result.get("segments", [])]


def render_sentences(sentences: list[Sentence], text: str, fmt: str, duration_s: float | None) -> str:
    """txt, srt or vtt from sentences; speaker labels appear when the sentences have them."""
    speakers = any(s.speaker for s in sentences)
    until = None if duration_s is None else round(duration_s * 1000)
    if fmt == "txt":
        return to_paragraphs(sentences) if speakers else text + "\n"
    if fmt == "srt":
        return to_srt(sentences, speakers=speakers, until_ms=until)
    if fmt == "vtt":
        return to_vtt(sentences, speakers=speakers, until_ms=until)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def render(result: Any, fmt: Format, *, source: str | None = None) -> str:
    """Render a Transcript or LongTranscript (anything with text, to_dict and either sentences or
    tokens/timestamps) in `fmt`."""
    if fmt == "json":
        payload = result.to_dict()
        if source is not None:
            payload = {"file": source, **payload}
        return json.dumps(payload, ensure_ascii=False, indent=1) + "\n"
    return render_sentences(sentences_of(result), result.text, fmt, getattr(result, "duration_s", None))
