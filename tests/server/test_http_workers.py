"""`server.http_workers: 2`: two HTTP worker processes feeding one batching process
(asr/web/workers.py, asr/service/front.py), started as users start it (`webui.py --no-ui
--http-workers 2`) on the tiny model, checked against the one-process server with the same flags:
the same results at every door, requests of both workers in the same engine batches, a killed
worker replaced while the service keeps serving, batch jobs created through both workers run
once each, and a worker that cannot start stops the service loudly.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from speech import SENTENCES, recording, require_espeak

from .conftest import REPO, LiveServer, start_server, wav_bytes

FLAGS = ["--no-ui"]
SR = 16000
# Both servers punctuate with the demonstration model; the workers' punctuation and file VAD
# networks run once, in the batching process (longform.punc_in_engine, vad_in_engine), and must
# give the one-process server's marks and segments.
PUNC = str(REPO / "tests" / "assets" / "demo-model" / "punc")


def _info(server: LiveServer) -> dict[str, Any]:
    return httpx.get(server.url + "/api/info", timeout=30).json()


def _wait_for_workers(server: LiveServer, n: int, timeout_s: float = 180, old: dict[int, int] | None = None) -> dict:
    """Until the batching process has all `n` workers connected (with new pids for `old`'s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = _info(server)
            workers = {w["index"]: w["pid"] for w in info["http_workers"]["connected"]}
            if len(workers) == n and all(workers.get(i) not in (None, pid) for i, pid in (old or {}).items()):
                return info
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise AssertionError(f"workers did not connect:\n{server.log()[-4000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def workers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("workers"), args=[*FLAGS, "--http-workers", "2"],
                          env={"ASR_LONGFORM__PUNC_MODEL": PUNC, "ASR_LONGFORM__PUNC_IN_ENGINE": "true",
                               "ASR_LONGFORM__VAD_IN_ENGINE": "true"})
    try:
        _wait_for_workers(server, 2)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("single"), args=FLAGS,
                          env={"ASR_LONGFORM__PUNC_MODEL": PUNC})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    """Two sentences and a pause (the tiny model's text is arbitrary but deterministic)."""
    require_espeak()
    import io

    import soundfile as sf

    rec = recording(SENTENCES[:2], [1.0], lead_s=0.4)
    buf = io.BytesIO()
    sf.write(buf, rec.audio, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "processing_ms"}


def _transcribe(server: LiveServer, name: str, data: bytes, **form: str) -> httpx.Response:
    # A new connection per request: the kernel hands each to one of the workers.
    with httpx.Client(timeout=120) as client:
        return client.post(server.url + "/api/transcribe", files={"file": (name, data)}, data=form)


def test_every_door_gives_the_one_process_servers_results(
    workers: LiveServer, single: LiveServer, audio_dir: Path, speech_wav: bytes
) -> None:
    files = {p.name: p.read_bytes() for p in sorted(audio_dir.iterdir())}
    files["speech.wav"] = speech_wav
    for name, data in files.items():
        for form in ({}, {"hotwords": "北京 上海", "vad": "on", "punc": "off"}):
            want, got = _transcribe(single, name, data, **form), _transcribe(workers, name, data, **form)
            assert got.status_code == want.status_code, (name, got.text)
            body_w, body_g = want.json(), got.json()
            if want.status_code == 200:
                assert _comparable(body_g) == _comparable(body_w), name
                assert body_g["applied"]["punctuation"] == (form.get("punc") != "off"), name
            else:  # typed errors: the same code and message
                assert body_g == body_w, name
    # The OpenAI route, plain and as server-sent events.
    for fields in ({"response_format": "verbose_json"}, {"stream": "true"}):
        answers = []
        for server in (single, workers):
            with httpx.Client(timeout=120) as client:
                r = client.post(server.url + "/v1/audio/transcriptions", files={"file": ("s.wav", speech_wav)},
                                data={"model": "paraformer", **fields})  # fmt: skip
            assert r.status_code == 200, r.text
            answers.append(r.json() if "stream" not in fields else
                           [line for line in r.text.splitlines() if line.startswith("data:")])  # fmt: skip
        if "stream" in fields:
            assert answers[0] == answers[1] and len(answers[1]) >= 2
        else:
            assert {k: v for k, v in answers[0].items() if k != "duration"} == {
                k: v for k, v in answers[1].items() if k != "duration"
            }
    info = _info(workers)["http_workers"]
    served = info["punctuation_served"]
    assert served["served"] and served["error"] is None and served["calls"] >= len(files) // 2, served
    assert info["vad_served"]["served"] and info["vad_served"]["calls"] >= 1, info["vad_served"]
    # The scheduler's figures in /api/info are the batching process's, whichever worker answers.
    for server in (single, workers):
        stages = _info(server)["scheduler"]["stages"]
        assert stages["wait_normal"]["n"] >= 2 * len(files) and stages["engine"]["n"] >= 1, stages
        assert stages["engine"]["p50_ms"] > 0


def test_live_websocket_is_served_by_a_worker(workers: LiveServer, speech_wav: bytes) -> None:
    from websockets.sync.client import connect

    api = _transcribe(workers, "s.wav", speech_wav, itn="off").json()
    import io

    import soundfile as sf

    pcm = sf.read(io.BytesIO(speech_wav), dtype="int16")[0].astype("<i2").tobytes()
    config = {"mode": "offline", "wav_name": "s", "wav_format": "pcm", "audio_fs": SR, "is_speaking": True,
              "chunk_size": [5, 10, 5], "chunk_interval": 10, "itn": False}  # fmt: skip
    for _ in range(2):  # two connections: most likely one per worker; either must work
        with connect(workers.url.replace("http://", "ws://") + "/api/live", open_timeout=30) as ws:
            ws.send(json.dumps(config))
            for i in range(0, len(pcm), 65536):
                ws.send(pcm[i : i + 65536])
            ws.send(json.dumps({"is_speaking": False}))
            msg = json.loads(ws.recv(timeout=120))
        assert msg["is_final"] and msg["mode"] == "offline"
        assert msg["text"] == api["text"]


def test_requests_from_both_workers_meet_in_the_same_batches(workers: LiveServer) -> None:
    clips = [wav_bytes(1.0 + 0.1 * (i % 5), seed=i) for i in range(24)]
    before = _info(workers)["http_workers"]
    for _ in range(5):  # the kernel picks the worker of each connection; rounds until both got some
        with cf.ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(lambda c: _transcribe(workers, "c.wav", c).status_code, clips))
        assert codes == [200] * len(clips)
        after = _info(workers)["http_workers"]
        per = {i: after["by_worker"].get(str(i), {}).get("segments", 0)
               - before["by_worker"].get(str(i), {}).get("segments", 0) for i in (0, 1)}  # fmt: skip
        if after["mixed_batches"] > before["mixed_batches"] and all(per.values()):
            break
    else:
        pytest.fail(f"no batch held both workers' requests: {before} -> {after}")
    assert after["segments_submitted"] - before["segments_submitted"] >= len(clips)
    # /metrics is the batching process's one registry whichever worker answers: every request of
    # both workers is counted once.
    text = httpx.get(workers.url + "/metrics").text
    counted = sum(float(line.split()[-1]) for line in text.splitlines()
                  if line.startswith('asr_requests_total{endpoint="/api/transcribe",status="200"}'))  # fmt: skip
    assert counted >= len(clips)


def test_jobs_created_through_both_workers_run_once_each_in_worker_0(workers: LiveServer) -> None:
    before = _info(workers)["http_workers"]["by_worker"]
    jobs: dict[str, int] = {}
    for j in range(8):
        files = [("files", (f"j{j}-{k}.wav", wav_bytes(0.8 + 0.2 * k, seed=10 * j + k))) for k in range(2)]
        with httpx.Client(timeout=60) as client:  # a connection each: both workers take some
            r = client.post(workers.url + "/api/batch_async", files=files)
        assert r.status_code == 202, r.text
        jobs[r.json()["job_id"]] = 2
    deadline = time.monotonic() + 180
    for job_id in jobs:
        while True:
            state = httpx.get(f"{workers.url}/api/jobs/{job_id}", timeout=30).json()
            if state["status"] not in ("queued", "running"):
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["done"] == 2 and state["failed"] == 0, state
        assert all(f["result"]["text"] is not None for f in state["files"])
    after = _info(workers)["http_workers"]["by_worker"]

    def delta(index: int, what: str) -> int:
        return after.get(str(index), {}).get(what, 0) - before.get(str(index), {}).get(what, 0)

    assert delta(0, "jobs") + delta(1, "jobs") == len(jobs)
    assert delta(0, "jobs") > 0 and delta(1, "jobs") > 0, after  # created through both workers
    # Each file is one clip (short, no VAD): recognised exactly once, by worker 0 only.
    assert delta(0, "segments") == 2 * len(jobs) and delta(1, "segments") == 0


def test_hotword_sets_written_through_one_worker_are_used_by_all(workers: LiveServer) -> None:
    r = httpx.post(workers.url + "/api/hotword_sets", json={"name": "workers", "words": ["北京", "上海"]})
    assert r.status_code == 201, r.text
    for _ in range(6):  # new connections: both workers resolve the set
        r = _transcribe(workers, "a.wav", wav_bytes(1.0), hotword_sets="workers")
        assert r.status_code == 200, r.text
        assert r.json()["applied"]["hotword_sets"] == [{"name": "workers", "version": 1}]


def test_a_killed_worker_is_replaced_and_the_service_keeps_serving(workers: LiveServer) -> None:
    old = {w["index"]: w["pid"] for w in _info(workers)["http_workers"]["connected"]}
    os.kill(old[1], signal.SIGKILL)
    # Meanwhile the other worker serves (connections the kernel gave the dead one are lost with
    # it; a new connection goes to a live worker).
    ok = 0
    for _ in range(10):
        with contextlib.suppress(httpx.HTTPError):
            ok += _transcribe(workers, "a.wav", wav_bytes(1.0)).status_code == 200
    assert ok >= 8
    info = _wait_for_workers(workers, 2, old={1: old[1]})
    assert {w["index"]: w["pid"] for w in info["http_workers"]["connected"]}[0] == old[0]
    assert "HTTP worker 1" in workers.log() and "starting it again" in workers.log()
    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: _transcribe(workers, "a.wav", wav_bytes(1.0, seed=i)).status_code, range(16)))
    assert codes == [200] * 16


def test_a_second_server_on_the_same_port_is_refused(workers: LiveServer, tiny_model_dir: Path, tmp_path: Path) -> None:
    # One listening socket per worker (SO_REUSEPORT) must not let another server share the port.
    port = workers.url.rsplit(":", 1)[1]
    cmd = [sys.executable, str(REPO / "webui.py"), "--config", "cpu", "--model", str(tiny_model_dir), "--port", port,
           "--data-dir", str(tmp_path / "data"), "--no-ui", "--http-workers", "2"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 2 and "Cannot listen on 127.0.0.1:" in done.stderr, done.stderr[-2000:]
    assert _transcribe(workers, "a.wav", wav_bytes(1.0)).status_code == 200


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_service_loudly(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Only the workers open the job store: a folder where its database file should be kills each
    # at start-up, after the batching process is up.
    (tmp_path / "a-folder.sqlite3").mkdir()
    with pytest.raises(RuntimeError, match="exited with 1") as err:
        start_server(tiny_model_dir, tmp_path, args=[*FLAGS, "--http-workers", "2"],
                     env={"ASR_SERVER__JOBS_DB": str(tmp_path / "a-folder.sqlite3")})
    assert "times in a row" in str(err.value)


def test_the_web_ui_is_refused_with_several_workers(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ui: false") as err:
        start_server(tiny_model_dir, tmp_path, args=["--http-workers", "2"])
    assert "exited with 2" in str(err.value)


def test_engine_process_death_fails_in_flight_requests_typed_and_recovers(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The GPU's layout on a CPU: workers -> batching process -> engine process (engine.process=on).
    server = start_server(tiny_model_dir, tmp_path, args=[*FLAGS, "--http-workers", "2"],
                          env={"ASR_ENGINE__PROCESS": "on"})  # fmt: skip
    try:
        info = _wait_for_workers(server, 2)
        engine_pid = info["engine"]["process"]
        assert engine_pid not in (server.process.pid, *(w["pid"] for w in info["http_workers"]["connected"]))
        with cf.ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(_transcribe, server, "l.wav", wav_bytes(20.0, seed=i)) for i in range(12)]
            time.sleep(1.0)
            os.kill(engine_pid, signal.SIGKILL)
            answers = [f.result() for f in futures]
        for r in answers:  # each its own result or the typed engine failure: none hangs, none is raw
            typed = r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
            assert r.status_code == 200 or typed, r.text
        assert _transcribe(server, "a.wav", wav_bytes(1.0)).status_code == 200
        assert _info(server)["engine"]["process"] != engine_pid  # a new engine process serves
    finally:
        server.stop()
