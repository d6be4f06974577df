"""The server with decoding processes (as it runs on machines of 4+ cores) answers uploads exactly
as the one-process server does: short mp3 decoded whole elsewhere, long ones streamed back, broken
ones refused with the same status and code."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from audio_fixtures import all_formats, encode_av
from speech import SENTENCES, recording, require_espeak

from .conftest import start_server

# One clip per engine call in both servers: the long file's segments reach the scheduler at
# different moments when decoded elsewhere, and with random weights a batch of a different
# composition (other padding, other matrix shapes) can flip a near-tie token. What is compared
# here is the decoded audio's path, not batching.
_ONE_BY_ONE = {"ASR_ENGINE__MAX_BATCH_SIZE": "1"}


def _server(tiny_model_dir, tmp_path_factory, name: str, processes: int, **env: str):
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp(name), env={
        "ASR_PIPELINE__DECODE_PROCESSES": str(processes), **_ONE_BY_ONE, **env})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pooled_server(tiny_model_dir, tmp_path_factory):
    yield from _server(tiny_model_dir, tmp_path_factory, "pooled", 2)  # two, whatever the cores here


@pytest.fixture(scope="module")
def plain_server(tiny_model_dir, tmp_path_factory):
    yield from _server(tiny_model_dir, tmp_path_factory, "plain", 0)


def _answer(url: str, name: str, data: bytes) -> tuple[int, dict]:
    resp = httpx.post(url + "/api/transcribe", files={"file": (name, data)}, timeout=120)
    body = resp.json()
    if resp.status_code == 200:
        body.pop("processing_ms")
    return resp.status_code, body


def test_uploads_get_the_same_answers_with_decoding_processes(plain_server, pooled_server):
    require_espeak()
    short = encode_av(recording(SENTENCES[:2], [0.8]).audio, 16000, "mp3", "mp3")
    long = encode_av(recording(SENTENCES * 2, [1.0]).audio, 16000, "mp3", "mp3")
    uploads = {
        "short.mp3": short,  # decoded whole in a process
        "long.mp3": long,  # longer than 45 s: streamed back from a process, VAD path
        "aac.m4a": all_formats(2.0)["aac.m4a"],
        "speech.wav": all_formats(2.0)["pcm16_16k.wav"],  # WAV stays in the server process
        "broken.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40,
    }
    for name, data in uploads.items():
        plain = _answer(plain_server.url, name, data)
        pooled = _answer(pooled_server.url, name, data)
        assert pooled == plain, name
    assert _answer(pooled_server.url, "broken.mp3", uploads["broken.mp3"])[0] == 415
    status, body = _answer(pooled_server.url, "long.mp3", long)
    assert status == 200 and body["applied"]["vad"] and body["duration_ms"] > 50_000
    log = pooled_server.log()
    assert "decoded in 2 processes" in log and "decoded in" not in plain_server.log()
    assert "decoding process died" not in log and "Traceback" not in log


def test_the_engine_in_a_process_of_its_own_answers_alike_and_survives_its_death(
    plain_server, tiny_model_dir, tmp_path_factory
):
    """engine.process=on (the default on a GPU): the same answers as the engine in the server's
    process; a killed engine process is replaced and the server goes on answering."""
    require_espeak()
    uploads = {
        "short.mp3": encode_av(recording(SENTENCES[:2], [0.8]).audio, 16000, "mp3", "mp3"),
        "long.mp3": encode_av(recording(SENTENCES * 2, [1.0]).audio, 16000, "mp3", "mp3"),
        "speech.wav": all_formats(2.0)["pcm16_16k.wav"],
    }
    gen = _server(tiny_model_dir, tmp_path_factory, "engine-process", 0, ASR_ENGINE__PROCESS="on")
    server = next(gen)
    try:
        child = httpx.get(server.url + "/api/info", timeout=30).json()["engine"]["process"]
        assert child != server.process.pid
        for name, data in uploads.items():
            assert _answer(server.url, name, data) == _answer(plain_server.url, name, data), name
        os.kill(child, signal.SIGKILL)
        for name, data in uploads.items():
            assert _answer(server.url, name, data) == _answer(plain_server.url, name, data), name
        assert httpx.get(server.url + "/api/info", timeout=30).json()["engine"]["process"] != child
        assert "starting a new one" in server.log()
        replacement = httpx.get(server.url + "/api/info", timeout=30).json()["engine"]["process"]
    finally:
        next(gen, None)  # stops the server
    deadline = time.monotonic() + 30
    while _alive(replacement) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(replacement), "the engine process outlived the server"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
