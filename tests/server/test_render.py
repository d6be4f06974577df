"""Results as the service stores and renders them (txt, srt, vtt, json)."""

from __future__ import annotations

import json

from asr.engine.core import Transcript
from asr.service.core import render_result, safe_stem, transcript_to_result


def _transcript() -> Transcript:
    tokens = ["今", "天", "好", "。", "明", "天", "见"]
    stamps = [(0, 100), (100, 200), (200, 300), (300, 320), (1500, 1600), (1600, 1700), (1700, 1800)]
    return Transcript("今天好。明天见", tokens, list(range(7)), stamps, 2.0)


def test_result_holds_timings_and_cues() -> None:
    result = transcript_to_result(_transcript(), 2.0, ("北京",), 0.5, timestamps=True)
    assert result["rtf"] == 0.25 and result["hotwords"] == ["北京"]
    assert result["tokens"][4] == {"text": "明", "start": 1.5, "end": 1.6}
    assert [(s["start"], s["end"], s["text"]) for s in result["segments"]] == [
        (0.0, 0.32, "今天好。"),
        (1.5, 1.8, "明天见"),
    ]
    untimed = transcript_to_result(_transcript(), 2.0, (), 0.5, timestamps=False)
    assert "tokens" not in untimed and untimed["segments"] == result["segments"]


def test_stored_results_render_in_every_format() -> None:
    result = json.loads(json.dumps(transcript_to_result(_transcript(), 2.0, (), 0.5, timestamps=True)))
    assert render_result(result, "txt") == "今天好。明天见\n"
    srt = render_result(result, "srt")
    # Cues stay up at least 0.5 s (asr.pipeline.subtitles) where the next cue and the file's end allow.
    assert srt.startswith(
        "1\n00:00:00,000 --> 00:00:00,500\n今天好。\n\n2\n00:00:01,500 --> 00:00:02,000\n明天见"
    )
    assert render_result(result, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.500\n今天好。")
    assert json.loads(render_result(result, "json")) == result


def test_safe_stem_keeps_chinese_and_drops_paths() -> None:
    assert safe_stem("../../etc/会议 记录.mp3") == "会议_记录"
    assert safe_stem("...") == "audio"
