"""Short compressed files decoded in the pipeline's decoding processes (`pipeline.decode_processes`):
the same results as decoding in its threads, file by file, and the same typed errors."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from audio_fixtures import all_formats, encode_av
from speech import SENTENCES, recording, require_espeak

from asr.errors import ASRError, AudioError
from asr.pipeline.audio import AudioStream
from asr.pipeline.options import Options
from asr.pipeline.pipeline import Pipeline
from asr.settings import load_settings


def _settings(processes: int):
    return load_settings(
        None,
        engine={"device": "cpu"},
        longform={"punc_model": None},
        pipeline={"decode_processes": processes, "decode_process_max_mb": 0.75},
    )


def _inputs() -> dict[str, object]:
    require_espeak()
    speech = recording(SENTENCES[:3], [0.8]).audio
    long_speech = recording(SENTENCES * 2, [1.0]).audio  # past auto_vad_s: VAD, streamed here
    assert len(long_speech) > 50 * 16000
    mp3 = encode_av(speech, 16000, "mp3", "mp3")
    formats = all_formats(2.0)
    return {
        "speech.mp3 (path)": "speech.mp3",
        "speech.mp3 (bytes)": mp3,
        "speech.mp3 (file)": io.BytesIO(mp3),
        "long.mp3": encode_av(long_speech, 16000, "mp3", "mp3"),
        "stereo44.mp3": formats["stereo44.mp3"],
        "aac.m4a": formats["aac.m4a"],
        "opus.webm": formats["opus.webm"],
        "vorbis.ogg": formats["vorbis.ogg"],
        "pcm16_16k.wav": formats["pcm16_16k.wav"],
        "broken.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40,
        "too big.mp3": encode_av(np.tile(speech, 30)[: 16000 * 300], 16000, "mp3", "mp3"),
    }


def _run(engine, processes: int, inputs: dict[str, object], tmp_path) -> tuple[dict[str, object], Pipeline]:
    sources = {}
    for name, data in inputs.items():
        if isinstance(data, str):
            path = tmp_path / data
            path.write_bytes(inputs["speech.mp3 (bytes)"])  # type: ignore[arg-type]
            sources[name] = path
        elif isinstance(data, io.BytesIO):
            sources[name] = io.BytesIO(data.getvalue())
        else:
            sources[name] = data

    async def go() -> tuple[dict[str, object], Pipeline]:
        pipeline = Pipeline(_settings(processes), engine)
        await pipeline.start()
        try:
            got = await asyncio.gather(
                *(pipeline.transcribe(s, Options(), background=True) for s in sources.values()),
                return_exceptions=True,
            )
        finally:
            await pipeline.stop()
        out: dict[str, object] = {}
        for name, value in zip(sources, got):
            if isinstance(value, ASRError):
                out[name] = (type(value).__name__, value.code, str(value))
            elif isinstance(value, BaseException):
                raise value
            else:
                as_json = json.loads(value.to_json())
                as_json.pop("processing_ms")
                out[name] = as_json
        return out, pipeline

    return asyncio.run(go())


def test_files_decoded_in_processes_give_the_results_and_errors_of_threads(engine, tmp_path):
    inputs = _inputs()
    in_threads, plain = _run(engine, 0, inputs, tmp_path)
    in_processes, pooled = _run(engine, 2, inputs, tmp_path)
    assert plain.decoded_in_processes == 0
    # Every file but the WAV (read here without decoding) and the broken one (refused there,
    # with its code): the long mp3 and the large one given as bytes (through a temporary file)
    # stream from a process, the rest decode whole there.
    assert pooled.decoded_in_processes == 9
    assert set(in_threads) == set(in_processes)
    for name in in_threads:
        assert in_processes[name] == in_threads[name], name
    # Real results, not errors everywhere: every file but the broken one recognised.
    assert in_threads["broken.mp3"][:2] == ("AudioError", "unsupported_format")  # type: ignore[index]
    for name, value in in_threads.items():
        if name != "broken.mp3":
            assert isinstance(value, dict) and value["duration_ms"] > 1000, name
    assert in_threads["long.mp3"]["applied"]["vad"] is True  # type: ignore[index]
    assert in_threads["speech.mp3 (path)"] == in_threads["speech.mp3 (bytes)"] == in_threads["speech.mp3 (file)"]


def test_compressed_files_go_to_the_processes_and_wavs_stay(engine, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    inputs = _inputs()

    async def go() -> dict[str, bool]:
        pipeline = Pipeline(_settings(2), engine)
        await pipeline.start()
        try:
            sent = {}
            for name in ("speech.mp3 (bytes)", "pcm16_16k.wav", "too big.mp3", "long.mp3", "broken.mp3"):
                try:
                    out = await pipeline._decode_elsewhere(inputs[name], 45.0)  # type: ignore[arg-type]
                except AudioError as exc:
                    sent[name] = exc.code == "unsupported_format"  # decoded there, refused with its code
                    continue
                sent[name] = isinstance(out, AudioStream)
                if sent[name]:
                    out.close()  # what the pipeline does with every stream: the temporary file goes
                else:
                    assert out is inputs[name]  # handed back untouched, streamed in a thread
            return sent
        finally:
            await pipeline.stop()

    sent = asyncio.run(go())
    assert sent == {
        "speech.mp3 (bytes)": True,  # decoded whole there
        "pcm16_16k.wav": False,  # WAV needs no decoding
        "too big.mp3": True,  # bytes over decode_process_max_mb: streamed from a temporary file
        "long.mp3": True,  # decoded there, longer than 45 s: streamed from there instead
        "broken.mp3": True,
    }
    assert not list(tmp_path.glob("asr-decode-*"))


def test_a_stream_abandoned_midway_frees_its_process(engine, tmp_path):
    """A long recording's reader that stops early (a request cancelled, a limit hit) ends the
    decoding process's work: the pool serves the next recordings."""
    inputs = _inputs()

    async def go() -> list[int]:
        pipeline = Pipeline(_settings(1), engine)  # one process: a stuck job would block the rest
        await pipeline.start()
        try:
            big = tmp_path / "too big.mp3"
            big.write_bytes(inputs["too big.mp3"])  # type: ignore[arg-type]
            for _ in range(3):
                stream = await pipeline._decode_elsewhere(big, 45.0)  # a path: streamed from there
                assert isinstance(stream, AudioStream)
                first = next(iter(stream.blocks()))
                assert len(first) > 0
                stream.close()  # 290 s of audio left unread
            done = await pipeline.transcribe(inputs["speech.mp3 (bytes)"], Options(), background=True)
            return [done.duration_ms]
        finally:
            await pipeline.stop()

    assert asyncio.run(go())[0] > 1000


def test_more_long_recordings_than_decoding_processes_and_threads_all_finish(engine, tmp_path):
    """Long recordings each stream from a decoding process of their own; those waiting for a
    process must not hold the pipeline's threads, which the ones decoding need to be read (with
    one process and two threads, four recordings waited forever)."""
    long_mp3 = _inputs()["long.mp3"]
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"long{i}.mp3")
        paths[-1].write_bytes(long_mp3)  # type: ignore[arg-type]
    settings = _settings(1)
    settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(update={"workers": 2})})

    async def go() -> list[str]:
        pipeline = Pipeline(settings, engine)
        await pipeline.start()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(pipeline.transcribe(p, Options(), background=True) for p in paths)), 120)
            assert pipeline.decoded_in_processes == len(paths)
            return [r.text for r in results]
        finally:
            await pipeline.stop()

    texts = asyncio.run(go())
    assert texts[0] and texts == [texts[0]] * len(paths)


@pytest.mark.parametrize("processes", [0, 2])
def test_a_file_object_is_read_again_from_its_start_when_it_stays_here(engine, processes):
    data = _inputs()["long.mp3"]
    handle = io.BytesIO(data)  # type: ignore[arg-type]

    async def go():
        pipeline = Pipeline(_settings(processes), engine)
        await pipeline.start()
        try:
            return await pipeline.transcribe(handle, Options(), background=True)
        finally:
            await pipeline.stop()

    result = asyncio.run(go())
    assert result.duration_ms > 50_000 and result.applied.vad


@pytest.mark.parametrize("entry_point", [False, True])
def test_processes_start_on_their_own_only_under_the_products_entry_points(engine, monkeypatch, entry_point):
    # A user's script that calls the pipeline without a main-module guard must not have its
    # module re-run by spawned children: the automatic setting decodes in threads there.
    import asr.pipeline.pipeline as pipeline_module
    import asr.runtime as runtime

    monkeypatch.setattr(pipeline_module, "usable_cores", lambda: 16)
    monkeypatch.setattr(runtime, "_configured", entry_point)

    async def go() -> bool:
        pipeline = Pipeline(_settings(-1), engine)
        await pipeline.start()
        try:
            return pipeline._decoders is not None
        finally:
            await pipeline.stop()

    assert asyncio.run(go()) is entry_point


def test_when_the_decoding_processes_die_files_decode_in_threads(engine):
    inputs = _inputs()

    async def go() -> tuple[list[object], bool]:
        pipeline = Pipeline(_settings(2), engine)
        await pipeline.start()
        try:
            await pipeline.transcribe(inputs["speech.mp3 (bytes)"], Options(), background=True)  # pool up
            for process in list(pipeline._decoders._processes.values()):  # type: ignore[union-attr]
                process.kill()
            out = []
            for name in ("long.mp3", "speech.mp3 (bytes)", "broken.mp3"):
                try:
                    result = await pipeline.transcribe(inputs[name], Options(), background=True)
                    out.append(result.duration_ms)
                except AudioError as exc:
                    out.append(exc.code)
            return out, pipeline._decoders is None
        finally:
            await pipeline.stop()

    out, fell_back = asyncio.run(go())
    assert fell_back
    assert out[0] > 50_000 and out[1] > 1_000 and out[2] == "unsupported_format"


def test_a_pool_started_before_the_models_serves_pipelines_and_outlives_them(engine, tmp_path):
    """The CLI starts the decoding processes before it loads the models and hands them to its
    pipeline: they decode there, every one already started, and stay the caller's to shut down."""
    from asr.pipeline.audio import ready_to_decode
    from asr.pipeline.pipeline import start_decoders

    settings = _settings(2)
    pool = start_decoders(settings)
    assert pool is not None and len(pool._processes) == 2  # all started, none waits for work
    path = tmp_path / "speech.mp3"
    path.write_bytes(encode_av(np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32),
                               16000, "mp3", "mp3"))

    async def go() -> tuple[str, int]:
        pipeline = Pipeline(settings, engine, decoders=pool)
        await pipeline.start()
        try:
            result = await pipeline.transcribe(path, Options(), background=True)
            return result.text, pipeline.decoded_in_processes
        finally:
            await pipeline.stop()

    try:
        text, in_processes = asyncio.run(go())
        assert text and in_processes == 1
        pool.submit(ready_to_decode).result(timeout=30)  # the pipeline's stop left it running
    finally:
        pool.shutdown()


@pytest.mark.parametrize(("cores", "own", "workers", "expected"), [
    (2, True, 1, 1),     # a small machine still decodes outside the event loop's process
    (16, True, 1, 8),    # half the cores
    (64, True, 1, 16),   # at most 16
    (16, True, 4, 2),    # split among 4 HTTP workers
    (2, True, 4, 1),     # at least one each
    (16, False, 1, 0),   # a user's script: no spawning without its main-module guard
])
def test_automatic_decoding_processes(monkeypatch: pytest.MonkeyPatch, cores: int, own: bool, workers: int,
                                      expected: int) -> None:
    """-1 resolves to processes even on 2 cores: in a thread, PyAV takes the GIL back after every
    packet and waits out the switch interval behind any running Python (the event loop), so a
    worker's mp3 uploads crawled."""
    import asr.pipeline.pipeline as pipeline_module
    import asr.runtime
    from asr.service.front import worker_settings

    monkeypatch.setattr(asr.runtime, "usable_cores", lambda: cores)
    monkeypatch.setattr(pipeline_module, "usable_cores", lambda: cores)
    monkeypatch.setattr(pipeline_module, "own_process", lambda: own)
    settings = load_settings(None, server={"http_workers": workers, "ui": workers == 1})
    assert settings.pipeline.decode_processes == -1
    if workers > 1:
        settings = worker_settings(settings, workers)
    assert pipeline_module.decode_process_count(settings) == expected


@pytest.mark.parametrize("given_as", ["bytes", "file"])
def test_a_large_upload_streams_from_a_process_through_a_temporary_file_removed_after(
        engine, tmp_path, monkeypatch, given_as):
    """Bytes or an upload over `decode_process_max_mb` are copied to a temporary file for the
    decoding processes (in this process PyAV would crawl beside the event loop); the file is
    gone once the recording is transcribed, and the result is the threads' own."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = _inputs()["too big.mp3"]
    assert len(data) > 0.75 * 1048576  # type: ignore[arg-type]

    def source():
        return data if given_as == "bytes" else io.BytesIO(data)  # type: ignore[arg-type]

    async def go(processes: int):
        pipeline = Pipeline(_settings(processes), engine)
        await pipeline.start()
        try:
            result = await pipeline.transcribe(source(), Options(), background=True)
            return json.loads(result.to_json()), pipeline.decoded_in_processes
        finally:
            await pipeline.stop()

    (pooled, sent), (plain, _) = asyncio.run(go(2)), asyncio.run(go(0))
    assert sent == 1
    pooled.pop("processing_ms")
    plain.pop("processing_ms")
    assert pooled == plain and pooled["duration_ms"] > 250_000
    assert not list(tmp_path.glob("asr-decode-*"))


def test_decoding_processes_end_when_their_parent_is_killed(tmp_path):
    """A server killed outright (SIGKILL, the OOM killer) leaves no decoding process behind."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, sys, time\n"
        "from asr.pipeline.pipeline import start_decoders\n"
        "from asr.settings import load_settings\n"
        "if __name__ == '__main__':\n"
        "    pool = start_decoders(load_settings(None, pipeline={'decode_processes': 2}))\n"
        "    pool.submit(time.sleep, 0).result()\n"
        "    while len(multiprocessing.active_children()) < 2: time.sleep(0.05)\n"
        "    print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
        "    time.sleep(600)\n"
    )
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(root)})
    try:
        children = [int(pid) for pid in parent.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(children) >= 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(") ", 1)[1][0]
        except (FileNotFoundError, ProcessLookupError):
            return False
        return state != "Z"  # a zombie has exited (init reaps it)

    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]


def test_a_large_upload_without_room_for_a_temporary_file_is_decoded_here(engine, monkeypatch):
    """A full disk where the temporary file would go: the upload is decoded in this process, as
    before, not refused."""
    import errno
    import tempfile

    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_room)
    data = _inputs()["too big.mp3"]

    async def go():
        pipeline = Pipeline(_settings(2), engine)
        await pipeline.start()
        try:
            result = await pipeline.transcribe(io.BytesIO(data), Options(), background=True)  # type: ignore[arg-type]
            return result.duration_ms, pipeline.decoded_in_processes
        finally:
            await pipeline.stop()

    duration_ms, sent = asyncio.run(go())
    assert sent == 0 and duration_ms > 250_000
