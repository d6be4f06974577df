"""The one typed result of a transcription, and its one JSON form.

Every door (CLI, /api/transcribe, the OpenAI route, batch jobs, the web UI) returns or stores a
`Result` and renders it (`asr.pipeline.formats`); nothing downstream reads a dict or probes
attributes. Times are integer milliseconds on the file's timeline. The JSON form is the
dataclasses' fields (pydantic serialises and validates them, and gives FastAPI the schema shown
at /docs); `version` changes whenever a field changes meaning. docs/result.md has the field table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter

from asr.pipeline.subtitles import Sentence

SCHEMA_VERSION = 1

# A field that only some results have (the channel of a token with channels=split) is left out
# of the JSON when it is not set, so every other result keeps its shape and size.
_Channel = Annotated[str | None, Field(exclude_if=lambda v: v is None)]


@dataclass(frozen=True)
class Token:
    """One recognised unit (a CJK character or an English word) with its time."""

    text: str
    start_ms: int
    end_ms: int
    speaker: _Channel = None
    """The channel's name with channels=split (absent otherwise)."""

@dataclass(frozen=True)
class Segment:
    """A stretch of the file the engine recognised as one clip (a VAD segment, or the whole file
    or a piece of it cut at a quiet point when VAD is off)."""

    start_ms: int
    end_ms: int
    speaker: _Channel = None
    """The channel's name with channels=split (absent otherwise)."""

@dataclass(frozen=True)
class HotwordSetUse:
    """A named hotword set as a request used it: its name and the version it had then."""

    name: str
    version: int

@dataclass(frozen=True)
class HotwordHit:
    """A hotword found in the final text: characters [start, end) of `Result.text` (code points),
    spoken from start_ms to end_ms."""

    word: str
    start: int
    end: int
    start_ms: int
    end_ms: int

@dataclass(frozen=True)
class CorrectionHit:
    """A correction-dictionary entry that was applied: `wrong` became `right`, which is
    characters [start, end) of `Result.text`, spoken from start_ms to end_ms."""

    wrong: str
    right: str
    start: int
    end: int
    start_ms: int
    end_ms: int

@dataclass(frozen=True)
class DiffSpan:
    """Where recognising with the hotwords and without them gave different text (engine output,
    before punctuation, ITN and corrections). `start`/`end`: the characters of `Result.text`
    spoken in that time (an empty range where the hotwords removed text)."""

    __pydantic_config__ = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    start_ms: int
    end_ms: int
    with_hotwords: Annotated[str, Field(alias="with")]
    without_hotwords: Annotated[str, Field(alias="without")]
    start: int = 0
    end: int = 0

@dataclass(frozen=True)
class Notice:
    """Something the user should know about this result (e.g. punctuation was unavailable)."""

    code: str
    message: str

@dataclass(frozen=True)
class Applied:
    """What was done to produce this result (the options after defaults were decided)."""

    vad: bool
    punctuation: bool
    speakers: bool
    timestamps: bool
    hotwords: tuple[str, ...] = ()
    """The hotwords the recogniser was given: the named sets' words, then the request's own."""
    itn: bool = False
    hotword_sets: tuple[HotwordSetUse, ...] = ()
    hotword_diff: bool = False
    channels: Literal["mix", "split"] = "mix"

@dataclass(frozen=True)
class Result:
    """What one recording said, when, and (optionally) by whom."""

    text: str
    """The transcript exactly as shown (punctuated when punctuation was applied)."""
    duration_ms: int
    sentences: tuple[Sentence, ...]
    """Readable pieces with their time span (subtitle cues are built from these)."""
    tokens: tuple[Token, ...]
    """Per-character (per English word) times; empty when timestamps were not asked for."""
    segments: tuple[Segment, ...]
    speakers: tuple[str, ...]
    """Speaker labels in order of first appearance; empty unless speakers were asked for."""
    applied: Applied
    notices: tuple[Notice, ...] = ()
    hotword_hits: tuple[HotwordHit, ...] = ()
    """Where the hotwords occur in `text` (longest first where two overlap)."""
    corrections: tuple[CorrectionHit, ...] = ()
    """Where the correction dictionary changed the text."""
    hotword_diff: tuple[DiffSpan, ...] | None = None
    """With hotword_diff: the spans that differ without the hotwords ([] when none); else null."""
    processing_ms: int = 0
    """Wall time from the request to the result (the only field that differs between runs)."""
    language: Literal["zh"] = "zh"
    version: int = SCHEMA_VERSION

    @property
    def duration_s(self) -> float:
        return self.duration_ms / 1000

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (tuples as lists)."""
        return _adapter().dump_python(self, mode="json")  # type: ignore[no-any-return]

    def to_json(self, *, indent: int | None = None) -> bytes:
        """The JSON form, UTF-8, characters unescaped."""
        return _adapter().dump_json(self, indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """A Result from its JSON form (validated), or from a result stored before `version` 1."""
        if "version" not in data:
            data = _from_unversioned(data)
        return _adapter().validate_python(data)  # type: ignore[no-any-return]

@cache
def _adapter() -> TypeAdapter[Result]:
    return TypeAdapter(Result)

def result_schema() -> dict[str, Any]:
    """JSON Schema of the result (for docs and clients)."""
    return _adapter().json_schema()

def _from_unversioned(old: Mapping[str, Any]) -> dict[str, Any]:
    """Results the job store kept before the result had a version (seconds for tokens and
    segments, `punctuated`, `vad`, `hotwords` at the top): jobs accepted then stay readable."""
    sentences = [
        {"text": s["text"], "start_ms": int(s["start_ms"]), "end_ms": int(s["end_ms"]), "speaker": s.get("speaker")}
        for s in old.get("sentences", [])
    ]
    tokens = [
        {"text": t["text"], "start_ms": round(t["start"] * 1000), "end_ms": round(t["end"] * 1000)}
        for t in old.get("tokens", []) if isinstance(t, Mapping)
    ]
    duration_ms = round(float(old.get("duration_s", 0.0)) * 1000)
    return {
        "text": old.get("text", ""),
        "duration_ms": duration_ms,
        "sentences": sentences,
        "tokens": tokens,
        "segments": [{"start_ms": 0, "end_ms": duration_ms}],
        "speakers": list(old.get("speakers", [])),
        "applied": {
            "vad": bool(old.get("vad", False)),
            "punctuation": bool(old.get("punctuated", False)),
            "speakers": bool(old.get("speakers")),
            "timestamps": bool(tokens),
            "hotwords": list(old.get("hotwords", [])),
        },
        "processing_ms": round(float(old.get("processing_s", 0.0)) * 1000),
        "version": SCHEMA_VERSION,
    }

__all__ = [
    "Applied", "CorrectionHit", "DiffSpan", "HotwordHit", "HotwordSetUse", "Notice", "Result", "SCHEMA_VERSION",
    "Segment", "Sentence", "Token", "result_schema",
]

