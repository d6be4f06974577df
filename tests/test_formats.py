"""Subtitle and text rendering from timed tokens."""

from __future__ import annotations

from asr import formats


def test_join_tokens_like_the_model_text() -> None:
    assert formats.join_tokens(["你", "好", "hello", "wor@@", "ld", "吗"]) == "你好hello world吗"


def test_segments_break_at_pauses_and_sentence_ends() -> None:
    tokens = ["今", "天", "好", "。", "明", "天", "见"]
    stamps = [[0, 100], [100, 200], [200, 300], [300, 320], [1500, 1600], [1600, 1700], [1700, 1800]]
    segs = formats.make_segments(tokens, stamps, text="今天好。明天见", duration_s=2.0)
    assert [(s.start, s.end, s.text) for s in segs] == [(0.0, 0.32, "今天好。"), (1.5, 1.8, "明天见")]
    assert formats.to_srt(segs) == (
        "1\n00:00:00,000 --> 00:00:00,320\n今天好。\n\n2\n00:00:01,500 --> 00:00:01,800\n明天见\n\n"
    )
    assert formats.to_vtt(segs).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.320\n今天好。\n")


def test_long_runs_are_split_and_untimed_text_is_one_cue() -> None:
    tokens = ["字"] * 60
    stamps = [[i * 100, i * 100 + 90] for i in range(60)]
    segs = formats.make_segments(tokens, stamps, text="字" * 60, duration_s=6.0)
    assert len(segs) == 3 and all(len(s.text) <= 24 for s in segs)
    assert "".join(s.text for s in segs) == "字" * 60
    one = formats.make_segments([], [], text="你好", duration_s=3723.5)
    assert formats.to_srt(one) == "1\n00:00:00,000 --> 01:02:03,500\n你好\n\n"
    assert formats.make_segments([], [], text="", duration_s=1.0) == []
