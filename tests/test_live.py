"""The live protocol's pure pieces (asr/service/live.py): the configuration FunASR's clients send,
and FunASR's result fields built from a Result. The connection itself: tests/server/test_live_ws.py."""

from __future__ import annotations

import json

import pytest

from asr.errors import HotwordError, LiveProtocolError
from asr.pipeline.result import Applied, Result, Token
from asr.pipeline.subtitles import Sentence
from asr.service.live import LiveConfig, result_fields, stamp_sents


def parse(**msg):
    return LiveConfig.from_message(msg, max_hotwords=10, max_hotword_chars=8)


@pytest.mark.parametrize(
    "hotwords",
    [
        json.dumps({"阿里巴巴": 20, "通义实验室": 30}, ensure_ascii=False),  # FunASR's documented form
        {"阿里巴巴": 20, "通义实验室": 30},  # the same as an object
        "阿里巴巴 通义实验室",  # plain words (FunASR's Python client with a word list)
        "阿里巴巴,通义实验室",
    ],
)
def test_hotwords_in_every_form_funasr_clients_send_become_plain_words(hotwords) -> None:
    assert parse(hotwords=hotwords).hotwords == ("阿里巴巴", "通义实验室")


def test_defaults_and_funasr_field_forms() -> None:
    cfg = parse()
    assert (cfg.mode, cfg.wav_format, cfg.audio_fs, cfg.chunk_size, cfg.itn) == ("2pass", "pcm", 16000, None, None)
    cfg = parse(mode="offline", wav_format="MP3", chunk_size="8,8,4", itn=False, audio_fs=8000,
                encoder_chunk_look_back=4)  # FunASR's streaming-model fields are accepted, unused
    got = (cfg.mode, cfg.wav_format, cfg.chunk_size, cfg.itn, cfg.audio_fs)
    assert got == ("offline", "mp3", (8, 8, 4), False, 8000)
    assert parse(wav_name="x" * 1000).wav_name == "x" * 256


@pytest.mark.parametrize(
    "msg",
    [{"mode": "stream"}, {"audio_fs": 7999}, {"audio_fs": 48001}, {"audio_fs": 16000.5}, {"audio_fs": True},
     {"chunk_size": [5, 0, 5]}, {"chunk_size": "a,b,c"}, {"itn": "yes"}, {"wav_name": 3},
     {"mode": "online", "wav_format": "wav"}, {"hotwords": 3.5j}],
)  # fmt: skip
def test_bad_fields_are_refused_with_a_sentence(msg) -> None:
    with pytest.raises(LiveProtocolError) as info:
        LiveConfig.from_message(msg, max_hotwords=10, max_hotword_chars=8)
    assert info.value.code == "invalid_live_config" and str(info.value)


def test_hotword_limits_hold_as_for_http() -> None:
    with pytest.raises(HotwordError):
        parse(hotwords={"超过八个字的一个热词": 10})


def test_stamp_sents_split_at_each_mark_with_character_times() -> None:
    tokens = [Token("正", 0, 90), Token("是", 100, 190), Token("hello", 200, 400), Token("天", 500, 590),
              Token("气", 600, 690)]  # fmt: skip
    result = Result(text="正是，hello。天气", duration_ms=700, sentences=(Sentence("正是，hello。", 0, 400),
                    Sentence("天气", 500, 690)), tokens=tuple(tokens), segments=(), speakers=(),
                    applied=Applied(vad=True, punctuation=True, speakers=False, timestamps=True))  # fmt: skip
    sents = stamp_sents(result)
    assert [(s["text_seg"], s["punc"], s["start"], s["end"]) for s in sents] == [
        ("正 是", "，", 0, 190), ("hello", "。", 200, 400), ("天 气", "", 500, 690)]
    assert [p for s in sents for p in s["ts_list"]] == [[t.start_ms, t.end_ms] for t in tokens]
    fields = result_fields(result)
    assert json.loads(fields["timestamp"]) == [[t.start_ms, t.end_ms] for t in tokens]
    assert fields["sentences"][1] == {"text": "天气", "start_ms": 500, "end_ms": 690}
