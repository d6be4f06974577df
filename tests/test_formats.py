"""Every output is rendered from a `Result` (asr.pipeline.formats), and the result's JSON form
round-trips, validates and reads results stored before it had a version."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from asr.pipeline.formats import openai_response, render
from asr.pipeline.result import SCHEMA_VERSION, Applied, Notice, Result, Segment, Sentence, Token, result_schema
from asr.service.core import safe_stem


def _result(speakers: bool = False) -> Result:
    tokens = [("今", 0, 100), ("天", 100, 200), ("好", 200, 300), ("明", 1500, 1600), ("天", 1600, 1700),
              ("见", 1700, 1800)]
    who = ("S1", "S2") if speakers else (None, None)
    return Result(
        text="今天好。明天见",
        duration_ms=2000,
        sentences=(Sentence("今天好。", 0, 300, who[0]), Sentence("明天见", 1500, 1800, who[1])),
        tokens=tuple(Token(*t) for t in tokens),
        segments=(Segment(0, 2000),),
        speakers=("S1", "S2") if speakers else (),
        applied=Applied(vad=False, punctuation=True, speakers=speakers, timestamps=True, hotwords=("北京",)),
        notices=(Notice("punctuation_unavailable", "Punctuation is unavailable."),),
        processing_ms=500,
    )


def test_text_subtitles_and_json() -> None:
    result = _result()
    assert render(result, "txt") == "今天好。明天见\n"
    srt = render(result, "srt")
    # Cues stay up at least 0.5 s (asr.pipeline.subtitles) where the next cue and the file's end allow.
    assert srt.startswith("1\n00:00:00,000 --> 00:00:00,500\n今天好。\n\n2\n00:00:01,500 --> 00:00:02,000\n明天见")
    assert render(result, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.500\n今天好。")
    payload = json.loads(render(result, "json"))
    assert payload["version"] == SCHEMA_VERSION and payload["duration_ms"] == 2000
    assert payload["tokens"][3] == {"text": "明", "start_ms": 1500, "end_ms": 1600}
    assert payload["applied"]["hotwords"] == ["北京"]
    assert "今天" in render(result, "json")  # UTF-8, not \\u escapes
    with pytest.raises(ValueError, match="unknown format"):
        render(result, "docx")


def test_speakers_label_paragraphs_and_cues() -> None:
    result = _result(speakers=True)
    assert render(result, "txt") == "S1: 今天好。\n\nS2: 明天见\n"
    assert "S2: 明天见" in render(result, "srt")
    assert "<v S1>今天好。" in render(result, "vtt")


def test_json_round_trips_and_is_validated() -> None:
    result = _result(speakers=True)
    assert Result.from_dict(json.loads(render(result, "json"))) == result
    bad = result.to_dict()
    bad["duration_ms"] = "long"
    with pytest.raises(ValidationError):
        Result.from_dict(bad)
    schema = result_schema()
    assert {"text", "duration_ms", "sentences", "tokens", "segments", "applied", "version"} <= set(
        schema["properties"]
    )


def test_results_stored_before_the_version_field_still_read() -> None:
    """Batch jobs accepted by an older server keep their results readable after an upgrade."""
    old = {
        "text": "今天好", "language": "zh", "duration_s": 2.0, "hotwords": ["北京"], "processing_s": 0.5,
        "rtf": 0.25, "punctuated": False, "vad": False,
        "tokens": [{"text": "今", "start": 0.0, "end": 0.1}],
        "sentences": [{"text": "今天好", "start_ms": 0, "end_ms": 300, "speaker": None}],
        "segments": [{"id": 0, "start": 0.0, "end": 0.3, "text": "今天好"}],
    }  # fmt: skip
    result = Result.from_dict(old)
    assert result.duration_ms == 2000 and result.tokens == (Token("今", 0, 100),)
    assert result.sentences == (Sentence("今天好", 0, 300),)
    assert result.applied.hotwords == ("北京",) and result.processing_ms == 500
    assert render(result, "srt").startswith("1\n00:00:00,000 --> 00:00:00,500\n今天好")


def test_openai_shapes() -> None:
    result = _result(speakers=True)
    assert openai_response(result, "json") == {"text": "今天好。明天见"}
    assert openai_response(result, "text") == "今天好。明天见\n"
    assert openai_response(result, "srt") == render(result, "srt")
    verbose = openai_response(result, "verbose_json", words=True)
    assert isinstance(verbose, dict) and verbose["duration"] == 2.0
    assert [(s["start"], s["end"], s["text"], s["speaker"]) for s in verbose["segments"]] == [
        (0.0, 0.3, "今天好。", "S1"), (1.5, 1.8, "明天见", "S2")
    ]
    assert verbose["words"][0] == {"word": "今", "start": 0.0, "end": 0.1}
    assert "words" not in openai_response(result, "verbose_json")


def test_safe_stem_keeps_chinese_and_drops_paths() -> None:
    assert safe_stem("../../etc/会议 记录.mp3") == "会议_记录"
    assert safe_stem("...") == "audio"
