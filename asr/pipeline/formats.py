"""Every output rendered from a `Result`: plain text, JSON, SRT, WebVTT and OpenAI's shapes.

Pure functions of the result: the CLI's files, the API's responses, the zip of a batch job and
the web UI's boxes all come from here, so a result looks the same whichever door it left by.
Subtitles come from the result's sentences (`asr.pipeline.subtitles.to_srt` / `to_vtt`: cues never
overlap, run backwards or outlast the file).
"""

from __future__ import annotations

import html
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
    # The explanations (extensions, in the result's own form) when there is something to explain.
    data = result.to_dict() if result.hotword_hits or result.corrections or result.hotword_diff is not None else {}
    for key in ("hotword_hits", "corrections"):
        if data.get(key):
            body[key] = data[key]
    if result.hotword_diff is not None:
        body["hotword_diff"] = data["hotword_diff"]
    return body


_MARK_CLASSES = (("asr-diff", "热词改变 changed by hotwords"), ("asr-hit", "热词 hotword"),
                 ("asr-fix", "纠错 corrected"))


def explain_html(result: Result) -> str:
    """The text with its hotwords, corrections and hotword_diff spans marked, then a table of the
    diff spans: an HTML fragment for the web UI. Every piece of text is escaped: transcripts,
    hotwords and corrections are user data."""
    text = result.text
    marks: list[set[str]] = [set() for _ in text]
    removed: dict[int, list[str]] = {}
    spans: list[tuple[str, int, int]] = [("asr-hit", h.start, h.end) for h in result.hotword_hits]
    spans += [("asr-fix", c.start, c.end) for c in result.corrections]
    for d in result.hotword_diff or ():
        if d.start < d.end:
            spans.append(("asr-diff", d.start, d.end))
        elif d.without_hotwords:
            removed.setdefault(d.start, []).append(d.without_hotwords)
    for cls, start, end in spans:
        for i in range(max(start, 0), min(end, len(text))):
            marks[i].add(cls)
    pieces = []
    run = 0  # start of the run of characters with the same marks
    for i in range(len(text) + 1):
        if i > run and (i == len(text) or i in removed or marks[i] != marks[run]):
            classes = " ".join(c for c, _ in _MARK_CLASSES if c in marks[run])
            chunk = html.escape(text[run:i])
            pieces.append(f'<mark class="{classes}">{chunk}</mark>' if classes else chunk)
            run = i
        for gone in removed.get(i, ()):
            pieces.append(f'<del class="asr-removed" title="无热词时 without hotwords">{html.escape(gone)}</del>')
    legend = " ".join(f'<mark class="{c}">{html.escape(label)}</mark>' for c, label in _MARK_CLASSES)
    legend += ' <del class="asr-removed">无热词时才有 only without hotwords</del>'
    out = [f'<div class="asr-explain"><p class="asr-explain-text">{"".join(pieces)}</p>',
           f'<p class="asr-explain-legend">{legend}</p>']
    if result.hotword_diff is not None:
        if result.hotword_diff:
            rows = "".join(
                f"<tr><td>{d.start_ms / 1000:.2f}–{d.end_ms / 1000:.2f} s</td><td>{html.escape(d.with_hotwords)}</td>"
                f"<td>{html.escape(d.without_hotwords)}</td></tr>"
                for d in result.hotword_diff
            )
            out.append('<table class="asr-diff-table"><tr><th>时间 Time</th><th>有热词 With hotwords</th>'
                       f"<th>无热词 Without</th></tr>{rows}</table>")
        else:
            out.append('<p class="asr-diff-none">热词没有改变识别结果。 The hotwords changed nothing.</p>')
    out.append("</div>")
    return "".join(out)
