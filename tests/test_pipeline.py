"""The pipeline (asr/pipeline/pipeline.py): segments on the file's timeline, shared engine
batches, punctuation wiring, memory that does not grow with the recording."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
from speech import SENTENCES, recording, require_espeak

from asr.pipeline.formats import render
from asr.pipeline.options import Options
from asr.pipeline.pipeline import blocks_stream, transcribe_files
from asr.pipeline.punc import make_punc_model_dir
from asr.pipeline.subtitles import (
    validate_srt,
    validate_vtt,
)
from asr.settings import load_settings

SR = 16000


@dataclass(frozen=True)
class _FakeTranscript:
    text: str
    tokens: list[str]
    timestamps: list[tuple[int, int]]


class _MarkerEngine:
    """Stand-in for pure timeline mapping: one token per clip spanning its audible part."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list]] = []

    def transcribe(self, audios, hotwords):
        self.calls.append((len(audios), hotwords))
        out = []
        for a in audios:
            loud = np.nonzero(np.abs(a) > 0.05)[0]
            ms = (int(loud[0] * 1000 / SR), int(loud[-1] * 1000 / SR))
            out.append(_FakeTranscript("字", ["字"], [ms]))
        return out

    def info(self):
        return {}


def _settings(**longform):
    return load_settings(None, engine={"device": "cpu"}, longform={"punc_model": None, **longform})


def _wav(audio) -> bytes:
    import io


    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.fixture(scope="module")
def long_rec():
    """About 2.5 minutes of espeak Mandarin: 12 sentences x 2, with pauses of 2-6 s."""
    require_espeak()
    return recording(SENTENCES * 2, [6.0, 2.5, 4.0], noise=0.002)


@pytest.fixture(scope="module")
def punc_dir(tmp_path_factory):
    vocab = sorted({c for s in SENTENCES for c in s if not c.isascii()})
    return make_punc_model_dir(tmp_path_factory.mktemp("punc"), vocab, seed=0)


def test_timeline_maps_back_to_known_positions():
    require_espeak()
    rec = recording(SENTENCES[:6], [2.0, 1.2], noise=0.002)
    engine = _MarkerEngine()
    # No merging of neighbouring regions: each sentence is its own segment.
    settings = _settings(min_segment_s=0, merge_gap_s=0)
    options = Options(hotwords=("会议",), vad=True, punctuation=False)
    (result,) = transcribe_files(settings, engine, [_wav(rec.audio)], options)
    assert all(h == ["会议"] for _, hw in engine.calls for h in hw)
    assert len(result.segments) == len(rec.spans) == len(result.tokens)
    for token, (start, end) in zip(result.tokens, rec.spans):
        assert abs(token.start_ms - start * 1000 // SR) <= 60
        assert abs(token.end_ms - end * 1000 // SR) <= 60
    assert validate_srt(render(result, "srt")) == len(result.sentences)
    assert result.duration_ms == len(rec.audio) * 1000 // SR


def test_files_share_engine_calls_with_per_file_hotwords():
    """Segments of two recordings in flight together are batched by the scheduler into shared
    engine calls, each item with its own file's hotwords."""
    require_espeak()
    a = recording(SENTENCES[:2], [1.5])
    b = recording(SENTENCES[2:5], [1.5])
    engine = _MarkerEngine()
    settings = load_settings(None, engine={"device": "cpu", "max_batch_size": 64},
                             server={"batch_wait_ms": 500}, longform={"punc_model": None})

    async def run():
        from asr.pipeline.pipeline import Pipeline

        pipeline = Pipeline(settings, engine)
        await pipeline.start()
        try:
            return await asyncio.gather(
                pipeline.transcribe(_wav(a.audio), Options(hotwords=("甲",), vad=True)),
                pipeline.transcribe(_wav(b.audio), Options(hotwords=("乙",), vad=True)),
            )
        finally:
            await pipeline.stop()

    res_a, res_b = asyncio.run(run())
    items = [tuple(h) for _, hw in engine.calls for h in hw]
    assert sorted(items) == sorted([("甲",)] * len(res_a.segments) + [("乙",)] * len(res_b.segments))
    assert any({("甲",), ("乙",)} <= {tuple(h) for h in hw} for _, hw in engine.calls)  # shared calls
    assert res_b.segments[-1].end_ms <= len(b.audio) * 1000 // SR


def test_real_engine_and_punctuation_wiring(tiny_model_dir, engine, punc_dir):
    """The project's tiny random-weight model: text is noise, but every piece must fit together."""
    require_espeak()
    rec = recording(SENTENCES[:4], [1.5, 0.8])
    settings = load_settings(None, engine={"model": str(tiny_model_dir), "device": "cpu"},
                             longform={"punc_model": str(punc_dir)})
    (result,) = transcribe_files(settings, engine, [_wav(rec.audio)], Options(vad=True))
    assert result.segments and result.applied.punctuation and result.tokens
    for token in result.tokens:  # token times land inside a segment on the file's timeline
        assert any(seg.start_ms <= token.start_ms <= token.end_ms <= seg.end_ms for seg in result.segments)
    assert result.sentences, "the tiny model yields tokens for this recording; sentences must follow"
    assert validate_srt(render(result, "srt")) == len(result.sentences)
    assert validate_vtt(render(result, "vtt")) == len(result.sentences)
    assert result.text.endswith(("。", ".", "？", "?", "！", "!"))


@pytest.mark.slow
def test_streaming_memory_does_not_grow_with_length(tiny_model_dir, engine, long_rec):
    """A recording streams through the pipeline: the peak of Python/numpy memory (tracemalloc,
    which numpy reports to; free of allocator noise) for a 9-minute stream equals that of a
    5-minute one within 4 MB, where holding the extra 4 minutes of audio alone would add 15 MB.
    Both are longer than Silero's 128 s decision block, which sets the fixed part of the peak.
    The stream is generated block by block from a real espeak recording, as a decoder yields it."""
    import tracemalloc

    settings = load_settings(None, engine={"model": str(tiny_model_dir), "device": "cpu"},
                             longform={"group_s": 15.0, "punc_model": None})
    options = Options(vad=True, punctuation=False)
    block = 10 * SR

    def stream(minutes: float):
        total = int(minutes * 60 * SR)
        for start in range(0, total, block):
            offset = start % (len(long_rec.audio) - block)
            yield long_rec.audio[offset : offset + min(block, total - start)].copy()

    transcribe_files(settings, engine, [blocks_stream(stream(0.5))], options)  # warm-up: lazy imports
    peaks = {}
    for minutes in (5, 9):
        tracemalloc.start()
        try:
            (result,) = transcribe_files(settings, engine, [blocks_stream(stream(minutes))], options)
            peaks[minutes] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        assert result.duration_ms == pytest.approx(minutes * 60_000, abs=1000) and result.segments
    assert peaks[9] - peaks[5] < 4, peaks



def test_on_segment_hands_each_segment_on_in_order_as_a_result_of_its_own():
    """The streamed form (SSE): every segment once, in the recording's order, each assembled as
    that segment alone; the returned result is the same as without the callback."""
    require_espeak()
    rec = recording(SENTENCES[:5], [1.5, 1.0], noise=0.002)
    settings = _settings(min_segment_s=0, merge_gap_s=0)
    engine = _MarkerEngine()
    options = Options(vad=True, punctuation=False)

    async def run():
        from asr.pipeline.pipeline import Pipeline

        pipeline = Pipeline(settings, engine)
        await pipeline.start()
        seen = []

        async def on_segment(result):
            await asyncio.sleep(0.01 * (len(seen) % 2))  # a slow consumer does not reorder
            seen.append(result)

        try:
            streamed = await pipeline.transcribe(_wav(rec.audio), options, on_segment=on_segment)
            plain = await pipeline.transcribe(_wav(rec.audio), options)
        finally:
            await pipeline.stop()
        return seen, streamed, plain

    seen, streamed, plain = asyncio.run(run())
    assert len(seen) == len(streamed.segments) == len(rec.spans)
    assert [s.segments for s in seen] == [(seg,) for seg in streamed.segments]
    assert [t for s in seen for t in s.tokens] == list(streamed.tokens)
    assert streamed.text == plain.text and streamed.segments == plain.segments


def test_an_accepted_recording_is_not_refused_halfway_by_a_full_queue():
    """An interactive long recording whose first segment was queued waits for room for the
    rest: the queue (one place here) fills with its own segments while a slow engine works, and
    the request is not failed as busy after part of it was recognised."""
    require_espeak()
    rec = recording(SENTENCES[:6], [1.5, 1.0], noise=0.002)

    class SlowEngine(_MarkerEngine):
        def transcribe(self, audios, hotwords):
            import time

            time.sleep(0.05)
            return super().transcribe(audios, hotwords)

    engine = SlowEngine()
    settings = load_settings(None, engine={"device": "cpu", "max_batch_size": 1}, server={"batch_wait_ms": 0},
                             limits={"max_queue": 1}, longform={"punc_model": None, "min_segment_s": 0,
                                                                "merge_gap_s": 0})

    async def run():
        from asr.pipeline.pipeline import Pipeline

        pipeline = Pipeline(settings, engine)
        await pipeline.start()
        try:
            return await pipeline.transcribe(_wav(rec.audio), Options(vad=True, punctuation=False))
        finally:
            await pipeline.stop()

    result = asyncio.run(run())
    assert len(result.segments) == len(rec.spans) == len(engine.calls) == 6


def test_audio_budget_waits_first_come_first_served_and_refuses_after_its_timeout() -> None:
    from asr.errors import BusyError
    from asr.pipeline.pipeline import AudioBudget

    async def run() -> list[str]:
        budget = AudioBudget(100)
        order: list[str] = []
        assert await budget.acquire(80) == 80
        assert budget.try_acquire(50) == 20  # what is free now, without waiting

        async def take(name: str, n: int) -> None:
            await budget.acquire(n)
            order.append(name)

        big = asyncio.create_task(take("big", 60))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 10))
        await asyncio.sleep(0)
        assert budget.try_acquire(5) == 0  # others wait: no overtaking
        with pytest.raises(BusyError):
            await budget.acquire(30, timeout=0.05)
        budget.release(100)
        await asyncio.gather(big, small)
        assert budget.used == 70
        budget.release(70)
        assert await budget.acquire(10_000) == 100  # clamped to the whole budget, not refused forever
        return order

    order = asyncio.run(run())
    assert order == ["big", "small"]  # the large request at the head is not overtaken


def test_subtitle_settings_shape_the_sentences(engine):
    """`subtitles.*` reaches the sentences (and so the cues) of a real recognition: the widths and
    pauses they set are the ones the result keeps; the defaults are the sentence builder's own."""
    from asr.pipeline.pipeline import subtitle_options
    from asr.pipeline.subtitles import SubtitleOptions, _width

    require_espeak()
    assert subtitle_options(load_settings(None)) == SubtitleOptions()
    rec = recording(SENTENCES[:4], [1.2, 1.5], noise=0.002)
    options = Options(vad=True, punctuation=False, itn=False)

    def sentences(**subtitles):
        settings = load_settings(None, engine={"device": "cpu"}, longform={"punc_model": None},
                                 subtitles=subtitles)
        stream = blocks_stream([rec.audio], len(rec.audio) / SR)
        (result,) = transcribe_files(settings, engine, [stream], options)
        assert result.text
        return result.sentences

    plain = sentences()
    narrow = sentences(max_chars=8)
    whole = sentences(max_chars=1000, max_duration_s=100, split_gap_s=30)
    assert all(_width(s.text) <= 24 for s in plain) and all(_width(s.text) <= 8 for s in narrow)
    assert len(narrow) > len(plain) >= 4  # a pause of 1.2 s or more breaks every sentence apart
    assert len(whole) == 1 and whole[0].text == "".join(s.text for s in plain)
