"""Every output rendered from a `Result`: plain text, JSON, SRT, WebVTT and OpenAI's shapes.

Pure functions of the result: the CLI's files, the API's responses, the zip of a batch job and
the web UI's boxes all come from here, so a result looks the same whichever door it left by.
Subtitles come from the result's sentences (`asr.pipeline.subtitles.to_srt` / `to_vtt`: cues never
overlap, run backwards or outlast the file).
"""

from __future__ import annotations

from typing import Any, Literal

from asr.pipeline.result import Result
from asr.pipeline.subtitles import to_paragraphs, to_srt, to_vtt

Format = Literal["txt", "json", "srt", "vtt"]
FORMATS: tuple[Format, ...] = ("txt", "json", "srt", "vtt")
MEDIA_TYPES = {
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}

OpenAIFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


def render(result: Result, fmt: str) -> str:
    """`result` as txt, json, srt or vtt (each ends with a newline)."""
    if fmt == "json":
        return result.to_json(indent=1).decode() + "\n"
    speakers = bool(result.speakers)
    if fmt == "txt":
        return to_paragraphs(list(result.sentences)) if speakers else result.text + "\n"
    if fmt == "srt":
        return to_srt(result.sentences, speakers=speakers, until_ms=result.duration_ms)
    if fmt == "vtt":
        return to_vtt(result.sentences, speakers=speakers, until_ms=result.duration_ms)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def openai_response(result: Result, response_format: str, *, words: bool = False) -> dict[str, Any] | str:
    """The body OpenAI's /v1/audio/transcriptions returns: a dict for json / verbose_json, text for
    text / srt / vtt. verbose_json segments are the result's sentences (in seconds, `speaker` when
    speakers are on); `words` adds per-character (per English word) times."""
    if response_format == "json":
        return {"text": result.text}
    if response_format == "text":
        return result.text + "\n"
    if response_format in ("srt", "vtt"):
        return render(result, response_format)
    if response_format != "verbose_json":
        raise ValueError(f"unknown response_format {response_format!r}")
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": "chinese",
        "duration": result.duration_ms / 1000,
        "text": result.text,
        "segments": [
            {
                "id": i,
                "start": s.start_ms / 1000,
                "end": s.end_ms / 1000,
                "text": s.text,
                **({"speaker": s.speaker} if s.speaker else {}),
                # Whisper's decoder statistics: neutral values, this model has none.
                "seek": 0,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for i, s in enumerate(result.sentences)
        ],
    }
    if words:
        body["words"] = [{"word": t.text, "start": t.start_ms / 1000, "end": t.end_ms / 1000} for t in result.tokens]
    return body
