"""A long mp3 on disk decoded in pieces by several decoding processes at once
(asr/pipeline/pieces.py): the samples of the one-process decoding bit for bit, for every frame
size, rate and channel layout; the same results and errors through the pipeline; at most
`in_flight` pieces decoding or waiting at once.

Real mp3 files made with PyAV (libmp3lame, with FFmpeg's ID3 and Info/Xing tag), of a speech-like
signal (harmonics and noise), so that every piece boundary falls mid-sound; pieces are seconds
long here so that a half-minute file has several.
"""

from __future__ import annotations

import asyncio
import functools
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import soxr
from audio_fixtures import encode_av, tone_with_noise

from asr.errors import ASRError
from asr.pipeline.audio import SAMPLE_RATE, open_audio
from asr.pipeline.options import Options
from asr.pipeline.pieces import _RESAMPLER_PERIOD, PieceStream, decode_piece, piece_rates, plan_pieces
from asr.pipeline.pipeline import Pipeline
from asr.settings import load_settings

PIECE_S = 6.0


def encode_mp3(x: np.ndarray, rate: int, vbr: bool = False, title: str | None = None) -> bytes:
    return encode_av(x, rate, "mp3", "mp3", vbr=vbr, title=title)


# name -> (rate, channels, vbr, title); MPEG-1 (1152-sample frames), MPEG-2 and 2.5 (576).
FILES = {
    "44k_mono": (44100, 1, False, None),
    "44k_stereo": (44100, 2, False, None),
    "48k": (48000, 1, False, None),
    "16k": (16000, 1, False, None),
    "22k": (22050, 1, False, None),
    "24k_stereo": (24000, 2, False, None),
    "32k": (32000, 1, False, None),
    "8k": (8000, 1, False, None),  # MPEG-2.5: telephone recordings
    "44k_vbr": (44100, 1, True, None),
    "44k_id3": (44100, 1, False, "长录音" * 2000),
}


@functools.cache
def mp3_bytes(name: str, seconds: float = 30.0) -> bytes:
    rate, channels, vbr, title = FILES[name]
    return encode_mp3(tone_with_noise(seconds, rate, seed=1, channels=channels), rate, vbr, title)


def mp3_file(tmp_path: Path, name: str, data: bytes | None = None) -> str:
    # A name with spaces, commas and CJK: pieces open it through FFmpeg's subfile protocol.
    path = tmp_path / f"{name} 会议录音,第1部分 (final).mp3"
    path.write_bytes(mp3_bytes(name) if data is None else data)
    return str(path)


def sequential(path: str, split: bool = False, max_duration_s: float | None = None) -> np.ndarray:
    with open_audio(path, channels="split" if split else "mix", max_duration_s=max_duration_s) as stream:
        return np.concatenate(list(stream.blocks()))


def in_pieces(path: str, split: bool = False) -> tuple[np.ndarray, int]:
    """The pieces decoded one after another here (the same function the processes run)."""
    plan = plan_pieces(path, PIECE_S, 0.0, None, split)
    assert plan is not None
    got = []
    for piece in plan.pieces:
        samples, _ = decode_piece(piece)
        assert samples is not None, piece
        got.append(samples)
    return np.concatenate(got), len(plan.pieces)


@pytest.mark.parametrize("name", sorted(FILES))
def test_pieces_give_the_sequential_samples(name, tmp_path):
    path = mp3_file(tmp_path, name)
    want = sequential(path)
    got, pieces = in_pieces(path)
    assert pieces >= 3
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("name", ["44k_stereo", "24k_stereo"])
def test_pieces_split_by_channel_give_the_sequential_samples(name, tmp_path):
    path = mp3_file(tmp_path, name)
    want = sequential(path, split=True)
    got, _ = in_pieces(path, split=True)
    assert got.shape == want.shape and got.shape[1] == 2
    assert np.array_equal(got, want)


@pytest.mark.parametrize("rate", sorted(_RESAMPLER_PERIOD))
def test_a_resampler_started_at_a_period_gives_the_streams_samples(rate):
    """The measured periods of soxr's block grid: a resampler started at a multiple, a second
    before the part compared, computes that part as the one started at the first sample."""
    if rate not in piece_rates():
        pytest.skip(f"libsoxr {soxr.__libsoxr_version__} is not the one measured: pieces are not used")
    if rate == SAMPLE_RATE:
        pytest.skip("16 kHz audio is not resampled")
    x = np.random.default_rng(0).normal(0, 0.2, 2 * _RESAMPLER_PERIOD[rate] + 3 * rate).astype(np.float32)

    def resampled(part: np.ndarray) -> np.ndarray:
        stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        chunks = [stream.resample_chunk(part[i : i + rate], last=False) for i in range(0, len(part), rate)]
        return np.concatenate(chunks)

    whole = resampled(x)
    begun = 2 * _RESAMPLER_PERIOD[rate]  # where the later resampler starts: a multiple
    unit = rate // gcd(rate, SAMPLE_RATE)  # a whole number of outputs before the part compared
    start = -(-(begun + rate) // unit) * unit
    later = resampled(x[begun:])
    offset, begin = (start - begun) * SAMPLE_RATE // rate, start * SAMPLE_RATE // rate
    assert np.array_equal(later[offset : offset + 16000], whole[begin : begin + 16000])


def test_a_truncated_or_damaged_mp3_gives_the_sequential_samples(tmp_path):
    data = mp3_bytes("44k_mono")
    truncated = mp3_file(tmp_path, "truncated", data[: len(data) * 2 // 3 + 101])  # cut mid-frame
    damaged = bytearray(data)
    rng = np.random.default_rng(3)
    at = len(data) // 2
    damaged[at : at + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    damaged_path = mp3_file(tmp_path, "damaged", bytes(damaged))
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for path, falls_back in ((truncated, False), (damaged_path, True)):
            want = sequential(path)
            plan = plan_pieces(path, PIECE_S, 0.0, None)
            assert plan is not None and len(plan.pieces) >= 2
            pieces = PieceStream(pool, plan, 2, None)
            got = np.concatenate(list(pieces.stream.blocks()))
            assert np.array_equal(got, want), path
            # The damaged frames: a piece that does not decode as planned hands over to the
            # sequential decoding here, which skips them as it always did.
            assert pieces.fell_back is falls_back, path


def test_at_most_in_flight_pieces_and_the_same_samples_from_the_processes(tmp_path):
    path = mp3_file(tmp_path, "44k_stereo")
    want = sequential(path)
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        plan = plan_pieces(path, PIECE_S, 0.0, None)
        assert plan is not None and len(plan.pieces) >= 4
        pieces = PieceStream(pool, plan, 2, None)
        blocks = []
        for block in pieces.stream.blocks():
            blocks.append(block)
            assert len(pieces._pending) <= 2
            time.sleep(0.01)  # a slow reader: the pieces wait for it, no more are started
        assert pieces.most_in_flight == 2
        assert not pieces.fell_back
        assert all(len(b) <= 10 * SAMPLE_RATE for b in blocks)  # blocks of BLOCK_S at most, like the files'
    assert np.array_equal(np.concatenate(blocks), want)
    assert pieces.stream.duration_s == pytest.approx(30.0, abs=0.1) and pieces.stream.channels == 2


def test_when_the_processes_die_midway_the_rest_decodes_here(tmp_path):
    path = mp3_file(tmp_path, "44k_mono")
    want = sequential(path)
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    try:
        plan = plan_pieces(path, PIECE_S, 0.0, None)
        assert plan is not None and len(plan.pieces) >= 4
        pieces = PieceStream(pool, plan, 2, None)
        blocks = pieces.stream.blocks()
        got = [next(blocks)]  # the first piece read
        for process in list(pool._processes.values()):
            process.kill()
        got.extend(blocks)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert pieces.fell_back
    assert np.array_equal(np.concatenate(got), want)


def test_only_long_mp3_files_are_cut(tmp_path):
    path = mp3_file(tmp_path, "44k_mono")
    assert plan_pieces(path, PIECE_S, 60.0, None) is None  # shorter than from_s
    assert plan_pieces(path, 0.0, 0.0, None) is None  # pieces turned off
    assert plan_pieces(path, PIECE_S, 0.0, 20.0) is None  # over the limit: refused where it is today
    m4a = tmp_path / "aac.m4a"
    from audio_fixtures import encode_av

    m4a.write_bytes(encode_av(tone_with_noise(30.0, 44100), 44100, "aac", "mp4"))
    assert plan_pieces(str(m4a), PIECE_S, 0.0, None) is None  # not an mp3: one process


def _settings(processes: int, **limits: float):
    return load_settings(
        None,
        engine={"device": "cpu"},
        longform={"punc_model": None},
        limits=limits or {},
        pipeline={
            "decode_processes": processes,
            "decode_process_max_mb": 0.1,  # the files here stream
            "decode_piece_s": 12.0,
            "decode_pieces_from_s": 30.0,
        },
    )


def _transcribe(engine, processes: int, path: str, **limits: float) -> tuple[object, int]:
    async def go() -> tuple[object, int]:
        pipeline = Pipeline(_settings(processes, **limits), engine)
        await pipeline.start()
        try:
            result = await pipeline.transcribe(Path(path), Options(), background=True)
        except ASRError as exc:
            return (type(exc).__name__, exc.code, str(exc)), pipeline.decoded_in_pieces
        finally:
            await pipeline.stop()
        as_json = json.loads(result.to_json())
        as_json.pop("processing_ms")
        return as_json, pipeline.decoded_in_pieces

    return asyncio.run(go())


def test_the_pipeline_gives_the_same_result_from_pieces(engine, tmp_path):
    from speech import SENTENCES, recording, require_espeak

    require_espeak()
    speech = recording(SENTENCES * 2, [1.0]).audio
    assert len(speech) > 50 * SAMPLE_RATE
    at_44k = soxr.resample(speech, SAMPLE_RATE, 44100, quality="HQ").astype(np.float32)
    path = mp3_file(tmp_path, "speech", encode_mp3(at_44k, 44100))
    in_threads, cut = _transcribe(engine, 0, path)
    in_pieces_, cut_there = _transcribe(engine, 2, path)
    assert cut == 0 and cut_there == 1
    assert in_pieces_ == in_threads
    assert isinstance(in_threads, dict) and in_threads["duration_ms"] > 50_000 and in_threads["text"]
    # Over the limit: the same typed error (the plan leaves such a file to one process).
    refused, _ = _transcribe(engine, 0, path, max_audio_s=40.0)
    refused_there, cut_there = _transcribe(engine, 2, path, max_audio_s=40.0)
    assert refused[:2] == ("LimitError", "audio_too_long") and refused_there == refused  # type: ignore[index]
    assert cut_there == 0


def test_long_files_decoding_together_are_cut_only_when_alone(engine, tmp_path):
    """Pieces go to a long file that has the decoding processes to itself; files arriving
    together stream from one process each (the same results either way), and once they have
    ended the next file is cut again."""
    speech = np.random.default_rng(5).normal(0, 0.1, 40 * 44100).astype(np.float32)
    path = mp3_file(tmp_path, "noise", encode_mp3(speech, 44100))

    async def go() -> tuple[list[dict], int, int, dict, int]:
        pipeline = Pipeline(_settings(2), engine)
        await pipeline.start()
        try:
            together = await asyncio.gather(*(pipeline.transcribe(Path(path), Options(), background=True)
                                              for _ in range(3)))
            cut_together = pipeline.decoded_in_pieces
            after = await pipeline.transcribe(Path(path), Options(), background=True)
            return ([r.text for r in together], cut_together, pipeline.decoded_in_pieces, after.text,
                    pipeline._long_decodes)
        finally:
            await pipeline.stop()

    texts, cut_together, cut_in_all, text_after, still_decoding = asyncio.run(go())
    assert cut_together == 1 and cut_in_all == 2 and still_decoding == 0
    assert texts[0] and texts[1:] == texts[:1] * 2 and text_after == texts[0]
