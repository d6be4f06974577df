"""VAD on real (synthesised) Mandarin speech; FSMN wiring with a random-weight model dir."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc

import numpy as np
import pytest
from speech import SENTENCES, recording, require_espeak, say

from asr.pipeline.vad import FsmnVad, SileroVad, VadOptions, VadOptionsError, make_fsmn_vad_dir, quietest_cut

SR = 16000
# Silero decides 32 ms frames and keeps 30-100 ms of hysteresis: boundaries within 150 ms.
TOLERANCE = int(0.15 * SR)
RAW = VadOptions(min_segment_s=0, merge_gap_s=0, speech_pad_ms=0, min_silence_ms=500)


@pytest.fixture(scope="module")
def rec():
    require_espeak()
    return recording(SENTENCES, [1.5, 0.8, 2.5, 1.2], noise=0.002)


@pytest.fixture(scope="module")
def silero():
    return SileroVad()


def test_silero_finds_sentence_boundaries(rec, silero):
    segs = silero.segment(rec.audio, RAW)
    assert len(segs) == len(rec.spans)
    for seg, (start, end) in zip(segs, rec.spans):
        assert abs(seg.start_sample - start) <= TOLERANCE
        assert abs(seg.end_sample - end) <= TOLERANCE


def test_default_segments_keep_sentences_apart_and_whole(rec, silero):
    """Pauses of 0.8-2.5 s end a segment (sentences are recognised better apart); every sentence
    lies whole inside its own segment."""
    opts = VadOptions()
    segs = silero.segment(rec.audio, opts)
    assert len(segs) == len(rec.spans)
    for a, b in zip(segs, segs[1:]):
        assert a.end_sample <= b.start_sample
    for seg, (start, end) in zip(segs, rec.spans, strict=True):
        assert seg.duration_s <= opts.max_segment_s
        assert seg.start_sample <= start and end <= seg.end_sample


def test_default_segments_join_across_a_pause_inside_a_sentence(silero):
    require_espeak()
    # 0.4 s pauses: a breath within a sentence, under merge_gap_s (0.5 s) with the padding.
    spoken = recording(SENTENCES[:3], [0.4], noise=0.002)
    apart = silero.segment(spoken.audio, dataclasses.replace(VadOptions(), merge_gap_s=0))
    joined = silero.segment(spoken.audio, VadOptions())
    assert len(apart) > 1 and len(joined) == 1
    assert joined[0].start_sample <= spoken.spans[0][0] and spoken.spans[-1][1] <= joined[0].end_sample


def test_long_speech_is_cut_at_a_pause_below_the_cap(silero):
    require_espeak()
    # Sentences with 350 ms pauses: one region for the VAD (min_silence 500 ms), over the cap.
    long = recording(SENTENCES[:6], [0.35], noise=0.002)
    opts = VadOptions(max_segment_s=12, min_silence_ms=500, min_segment_s=0, merge_gap_s=0)
    segs = silero.segment(long.audio, opts)
    assert len(segs) >= 3
    for seg in segs:
        assert seg.duration_s <= opts.max_segment_s
    pauses = [(e, s) for (_, e), (s, _) in zip(long.spans, long.spans[1:])]
    cuts = [a.end_sample for a, b in zip(segs, segs[1:]) if a.end_sample == b.start_sample]
    assert cuts
    for cut in cuts:  # every forced cut lands in a pause between sentences or a quiet gap
        energy = np.mean(long.audio[cut - 160 : cut + 160] ** 2)
        assert energy < 1e-4 or any(a - 800 <= cut <= b + 800 for a, b in pauses)


def test_quietest_cut_prefers_the_pause():
    rng = np.random.default_rng(0)
    audio = (rng.normal(0, 0.2, SR * 4)).astype(np.float32)
    audio[int(2.5 * SR) : int(2.7 * SR)] *= 0.001
    cut = quietest_cut(audio, SR, 4 * SR)
    assert int(2.5 * SR) <= cut <= int(2.7 * SR)


def test_stream_equals_whole_array_and_maps_timeline(rec, silero):
    whole = silero.segment(rec.audio)
    rng = np.random.default_rng(1)
    sizes = rng.integers(100, 40000, 400)
    blocks, pos = [], 0
    for n in sizes:
        blocks.append(rec.audio[pos : pos + n])
        pos += n
    blocks.append(rec.audio[pos:])
    chunks = list(silero.stream(iter(blocks)))
    assert [c.segment for c in chunks] == whole
    for c in chunks:  # the audio handed on is exactly that span of the file
        np.testing.assert_array_equal(c.audio, rec.audio[c.segment.start_sample : c.segment.end_sample])


def test_blocks_decided_by_several_threads_give_the_same_segments_as_one(rec):
    # Small blocks (2 lanes of 2 s), so the recording is many blocks decided out of order by
    # three threads; fed in odd-sized pieces so blocks complete mid-push. The probabilities,
    # hence the segments and their audio, must be exactly those of one thread.
    opts = dataclasses.replace(RAW, min_silence_ms=300)
    one = SileroVad(lanes=2, lane_s=2.0)
    three = SileroVad(lanes=2, lane_s=2.0, workers=3)
    assert three._pool is not None and one._pool is None
    sizes = [5000, 70000, 1, 33000]
    pieces, pos = [], 0
    while pos < len(rec.audio):
        n = sizes[len(pieces) % len(sizes)]
        pieces.append(rec.audio[pos : pos + n])
        pos += n
    a = list(one.stream(iter(pieces), opts))
    b = list(three.stream(iter(pieces), opts))
    assert len(a) == len(rec.spans)
    assert [c.segment for c in a] == [c.segment for c in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.audio, y.audio)
    np.testing.assert_array_equal(one.frame_probs(rec.audio[:0], rec.audio[:40000]),
                                  three.frame_probs(rec.audio[:0], rec.audio[:40000]))
    # A block handed over as the pieces it arrived in (no joined copy) is decided alike.
    history, block = rec.audio[:21000], rec.audio[21000:61001]
    np.testing.assert_array_equal(one.frame_probs(history, [block[:7], block[7:30000], block[30000:]]),
                                  one.frame_probs(history, block))


def test_lanes_agree_with_a_serial_pass(rec):
    serial = SileroVad(lanes=1, lane_s=1000, warmup_s=0).segment(rec.audio, RAW)
    laned = SileroVad().segment(rec.audio, RAW)
    assert len(serial) == len(laned)
    for a, b in zip(serial, laned):
        assert abs(a.start_sample - b.start_sample) <= 2 * 512
        assert abs(a.end_sample - b.end_sample) <= 2 * 512


@pytest.mark.slow
def test_streaming_memory_is_bounded_for_20_minutes(silero):
    require_espeak()
    speech = say(SENTENCES[0])
    minute = np.zeros(60 * SR, np.float32)
    for k in range(6):  # six sentences a minute
        minute[k * 10 * SR : k * 10 * SR + len(speech)] = speech
    minute += np.random.default_rng(0).normal(0, 0.002, len(minute)).astype(np.float32)

    def blocks(n_min: int):
        for _ in range(n_min):
            for i in range(0, len(minute), SR * 5):
                yield minute[i : i + SR * 5]

    def peak_for(n_min: int) -> tuple[int, int]:
        tracemalloc.start()
        n = sum(1 for _ in silero.stream(blocks(n_min)))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return n, peak

    t0 = time.perf_counter()
    n5, peak5 = peak_for(5)
    n20, peak20 = peak_for(20)
    assert n20 >= 4 * n5 - 1 and n5 >= 5  # segments kept coming all along
    # Memory is set by the VAD block (128 s) and one segment, not by the file: 20 minutes of
    # float32 are 77 MB, and the peak is no higher than for 5 minutes.
    assert peak20 <= peak5 * 1.25, (peak5, peak20)
    assert peak20 < 20 * 60 * SR * 4 / 1.5
    assert time.perf_counter() - t0 < 90


def test_fsmn_random_weights_load_and_segment(tmp_path):
    require_espeak()
    model_dir = make_fsmn_vad_dir(tmp_path / "fsmn", seed=0, decibel_thres=-30.0)
    assert {p.name for p in model_dir.iterdir()} >= {"config.yaml", "model.pt", "am.mvn"}
    vad = FsmnVad(model_dir)
    quiet = recording(SENTENCES[:3], [1.5, 0.8], noise=0.0005)
    segs = vad.segment(quiet.audio, RAW)
    # As an energy VAD it finds the same sentences; FSMN adds ~200 ms look-back / look-ahead.
    assert len(segs) == len(quiet.spans)
    for seg, (start, end) in zip(segs, quiet.spans):
        assert abs(seg.start_sample - start) <= int(0.4 * SR)
        assert abs(seg.end_sample - end) <= int(0.4 * SR)
    streamed = [c.segment for c in vad.stream(iter(np.array_split(quiet.audio, 5)), RAW)]
    assert streamed == segs


def test_options_are_validated():
    with pytest.raises(VadOptionsError):
        VadOptions(max_segment_s=0.5)
    with pytest.raises(VadOptionsError):
        dataclasses.replace(VadOptions(), min_segment_s=100)


def test_missing_model_dir_is_a_load_error(tmp_path):
    from asr.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        FsmnVad(tmp_path / "nope")


# ---- live streams (audio as it is spoken) ---------------------------------------------------

LIVE = VadOptions(max_segment_s=15.0, min_segment_s=0.0, merge_gap_s=0.0, min_silence_ms=300)


def _live_run(vad: SileroVad, audio: np.ndarray, step: int) -> tuple[list, list[tuple[int, int]]]:
    """Feed `audio` in `step`-sample messages; the segments and, at each step, the open audio's span."""
    from asr.pipeline.vad import LiveSegmenter

    seg = LiveSegmenter(vad.open_live(LIVE), LIVE)
    chunks, opened = [], []
    for i in range(0, len(audio), step):
        seg.append(audio[i : i + step])
        vad.decide_streams([seg.regions])
        chunks += seg.advance()
        open_chunk = seg.open_audio()
        if open_chunk is not None:
            start, end = open_chunk.segment.start_sample, open_chunk.segment.end_sample
            opened.append((start, end))
            assert np.array_equal(open_chunk.audio, audio[start:end])
    return chunks + seg.finish(), opened


def test_live_segments_are_the_sentences_and_close_soon_after_each(rec, silero):
    chunks, opened = _live_run(silero, rec.audio, 960)
    assert len(chunks) == len(rec.spans)
    pad = LIVE.speech_pad_ms * SR // 1000
    for chunk, (start, end) in zip(chunks, rec.spans):
        assert abs(chunk.segment.start_sample - (start - pad)) <= TOLERANCE
        assert abs(chunk.segment.end_sample - (end + pad)) <= TOLERANCE
        assert np.array_equal(chunk.audio, rec.audio[chunk.segment.start_sample : chunk.segment.end_sample])
    # Speech in progress is offered for partial text: open spans start where segments do and
    # grow with the audio received.
    starts = {c.segment.start_sample for c in chunks}
    assert {s for s, _ in opened} <= starts
    assert len(opened) > len(chunks) * 10


def test_live_streams_decided_together_equal_each_alone(rec, silero):
    """One batched Silero call per frame for many connections gives each the decisions it
    would get alone (each keeps its own recurrent state)."""
    from asr.pipeline.vad import LiveSegmenter

    audios = [rec.audio[: 20 * SR], rec.audio[5 * SR : 30 * SR], np.zeros(10 * SR, np.float32)]
    alone = [_live_run(silero, a, 1600)[0] for a in audios]
    segs = [LiveSegmenter(silero.open_live(LIVE), LIVE) for _ in audios]
    together: list[list] = [[] for _ in audios]
    for i in range(0, 30 * SR, 1600):
        for s, a in zip(segs, audios):
            s.append(a[i : i + 1600])
        silero.decide_streams([s.regions for s in segs])
        for out, s in zip(together, segs):
            out += s.advance()
    for out, s in zip(together, segs):
        out += s.finish()
    assert [[c.segment for c in out] for out in together] == [[c.segment for c in out] for out in alone]
    assert len(alone[0]) >= 2 and alone[2] == []


@pytest.mark.parametrize("min_silence_ms", [32, 100, 300])
def test_hysteresis_over_arrays_is_the_frame_by_frame_rule(min_silence_ms: int) -> None:
    """`frames` jumps between the frames where the state can change; it must close the same
    regions, and leave the same open state for the next call, as `frame` called on every frame,
    whatever the block boundaries (a region may open in one block and close blocks later)."""
    from asr.pipeline.vad import _Hysteresis

    rng = np.random.default_rng(min_silence_ms)
    opts = VadOptions(min_silence_ms=min_silence_ms)
    closed = 0
    for trial in range(40):
        # Runs of speech, silence and in-between probabilities, so every transition occurs.
        levels = rng.choice([0.05, 0.3, 0.45, 0.9, 0.6], size=rng.integers(1, 60))
        probs = np.repeat(levels, rng.integers(1, 25, size=len(levels))).astype(np.float32)
        probs += rng.normal(0, 0.05, len(probs)).astype(np.float32)
        one, blocks = _Hysteresis(opts), _Hysteresis(opts)
        want = [r for i, p in enumerate(probs.tolist()) if (r := one.frame(p, 7 + i * 512)) is not None]
        cuts = np.sort(rng.choice(np.arange(1, len(probs)), size=min(len(probs) - 1, trial % 5), replace=False))
        got = []
        for a, b in zip([0, *cuts], [*cuts, len(probs)]):
            got += blocks.frames(probs[a:b], 7 + a * 512, 512)
        assert got == want
        assert (blocks.speech_start, blocks.temp_end) == (one.speech_start, one.temp_end)
        closed += len(want)
    assert closed > 40  # the trials closed regions, not only opened them
