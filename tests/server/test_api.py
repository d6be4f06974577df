"""HTTP API through an in-process ASGI client (httpx), real engine on the tiny model."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from asr.pipeline.audio import decode_audio
from asr.service.jobs import JobStore
from asr.web import create_app

from .conftest import CORRUPT, service_settings, wav_bytes


def engine_text(engine: Any, data: bytes, hotwords: list[str] | None = None) -> str:
    return engine.transcribe([decode_audio(data)], [hotwords or []])[0].text


def wait_job(client: TestClient, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] == "done" or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


@pytest.mark.parametrize("name", ["clip1.wav", "clip.mp3", "clip.m4a", "clip.ogg"])
def test_transcribe_returns_the_engine_result_with_timings(
    client: TestClient, shared_engine: Any, audio_dir: Path, name: str
) -> None:
    data = (audio_dir / name).read_bytes()
    resp = client.post("/api/transcribe", files={"file": (name, data)}, data={"hotwords": "北京\n上海 深圳"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["version"] == 1
    assert body["text"] == engine_text(shared_engine, data, ["北京", "上海", "深圳"])
    assert body["applied"]["hotwords"] == ["北京", "上海", "深圳"]
    duration_ms = len(decode_audio(data)) * 1000 // 16000
    assert body["duration_ms"] == duration_ms
    assert body["processing_ms"] > 0
    starts = [t["start_ms"] for t in body["tokens"]]
    assert starts == sorted(starts)
    assert all(0 <= t["start_ms"] <= t["end_ms"] <= duration_ms for t in body["tokens"])
    assert "".join(s["text"] for s in body["sentences"]).replace(" ", "") == body["text"].replace(" ", "")
    assert body["segments"] == [{"start_ms": 0, "end_ms": duration_ms}]  # short: one clip, no VAD


def test_subtitle_and_text_formats(client: TestClient, audio_dir: Path) -> None:
    data = (audio_dir / "clip4.wav").read_bytes()
    as_json = client.post("/api/transcribe", files={"file": ("a.wav", data)}).json()
    assert as_json["text"], "the tiny random-weight model yields text for this clip; the checks below need it"
    txt = client.post("/api/transcribe", files={"file": ("a.wav", data)}, data={"format": "txt"})
    assert txt.status_code == 200 and txt.text == as_json["text"] + "\n"
    srt = client.post("/api/transcribe", files={"file": ("a.wav", data)}, data={"format": "srt"}).text
    vtt = client.post("/api/transcribe", files={"file": ("a.wav", data)}, data={"format": "vtt"}).text
    assert vtt.startswith("WEBVTT\n\n")
    assert srt.startswith("1\n00:00:") and " --> " in srt
    assert len(srt.strip().split("\n\n")) == len(as_json["sentences"])
    no_ts = client.post(
        "/api/transcribe", files={"file": ("a.wav", data)}, data={"timestamps": "false"}
    ).json()
    assert no_ts["tokens"] == [] and no_ts["text"] == as_json["text"]
    assert no_ts["sentences"] == as_json["sentences"]  # sentences keep their times


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (CORRUPT, 400, "corrupt_audio"),
        (b"this is plain text, not audio at all" * 10, 415, "unsupported_format"),
        (b"", 400, "empty_file"),
    ],
)
def test_bad_audio_is_a_client_error_with_a_message(
    client: TestClient, payload: bytes, status: int, code: str
) -> None:
    resp = client.post("/api/transcribe", files={"file": ("x.wav", payload)})
    body = resp.json()
    assert (resp.status_code, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]


def test_hotword_and_request_errors(client: TestClient) -> None:
    data = wav_bytes(1.0)
    too_long = client.post("/api/transcribe", files={"file": ("a.wav", data)}, data={"hotwords": "长" * 100})
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "invalid_hotwords"
    missing = client.post("/api/transcribe", data={"hotwords": "x"})
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "invalid_request"
    unknown = client.get("/api/jobs/not-a-job")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"


def test_upload_over_the_limit_is_413(tiny_model_dir: Path, shared_engine: Any, tmp_path: Path) -> None:
    settings = service_settings(tiny_model_dir, tmp_path, limits={"max_upload_mb": 0.01})
    with TestClient(create_app(settings, engine=shared_engine)) as c:
        resp = c.post("/api/transcribe", files={"file": ("big.wav", wav_bytes(2.0))})
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "limit_exceeded" and "MB" in resp.json()["error"]["message"]
        batch = c.post("/api/batch_async", files=[("files", ("big.wav", wav_bytes(2.0)))])
        assert batch.status_code == 413


def test_batch_of_ten_with_one_corrupt_file(client: TestClient, shared_engine: Any, audio_dir: Path) -> None:
    good = [(f"f{i}.wav", wav_bytes(0.8 + 0.2 * i, seed=i)) for i in range(9)]
    files = [*good[:4], ("broken.wav", CORRUPT), *good[4:]]
    resp = client.post("/api/batch_async", files=[("files", f) for f in files], data={"hotwords": "你好"})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert len(job_id) >= 20  # secrets.token_urlsafe(16): not guessable
    job = wait_job(client, job_id)
    assert job["status"] == "done" and job["total"] == 10
    assert (job["done"], job["failed"]) == (9, 1)
    failed = job["files"][4]
    assert failed["name"] == "broken.wav" and failed["status"] == "failed"
    assert failed["error"]["code"] and failed["error"]["message"]
    done = [f for f in job["files"] if f["status"] == "done"]
    assert [f["name"] for f in done] == [name for name, _ in good]
    for f, (_, data) in zip(done, good, strict=True):
        assert f["result"]["text"] == engine_text(shared_engine, data, ["你好"])

    archive = client.get(f"/api/jobs/{job_id}/download")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(archive.content)).namelist()
    assert len(names) == 9 * 3 + 1
    assert "005_broken.error.txt" in names and "001_f0.srt" in names and "010_f8.json" in names
    stored = json.loads(zipfile.ZipFile(io.BytesIO(archive.content)).read("001_f0.json"))
    assert stored["text"] == done[0]["result"]["text"]


def test_uploads_are_on_disk_before_the_job_id_is_returned(client: TestClient, tmp_path: Path) -> None:
    resp = client.post("/api/batch_async", files=[("files", ("../../etc/passwd.wav", wav_bytes(1.0)))])
    job_id = resp.json()["job_id"]
    stored = list((tmp_path / "data" / "uploads" / job_id).iterdir())
    # Generated names only: the client's (hostile) name never reaches the file system.
    assert [p.name for p in stored] == ["00000.upload"]
    assert stored[0].read_bytes() == wav_bytes(1.0)
    assert wait_job(client, job_id)["files"][0]["name"] == "../../etc/passwd.wav"


def test_unfinished_files_are_resumed_after_a_restart(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # A previous run accepted a job and died while processing its first file.
    store = JobStore(data_dir / "jobs.sqlite3", data_dir)
    job_id = store.create_job([("a.wav", wav_bytes(1.0, 1)), ("b.wav", wav_bytes(1.2, 2))], ["你好"])
    assert store.claim_next() is not None
    store.close()

    with TestClient(create_app(service_settings(tiny_model_dir, data_dir), engine=shared_engine)) as c:
        job = wait_job(c, job_id)
    assert [f["status"] for f in job["files"]] == ["done", "done"]
    assert job["files"][0]["result"]["text"] == engine_text(shared_engine, wav_bytes(1.0, 1), ["你好"])


def test_full_queue_answers_503_with_retry_after(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path
) -> None:
    settings = service_settings(
        tiny_model_dir, tmp_path, engine={"max_batch_size": 1}, limits={"max_queue": 1}
    )
    app = create_app(settings, engine=shared_engine)
    service = app.state.service
    data = wav_bytes(3.0)

    async def main() -> list[httpx.Response]:
        await service.start(warmup=False)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await asyncio.gather(
                    *(c.post("/api/transcribe", files={"file": ("a.wav", data)}) for _ in range(24))
                )
        finally:
            await service.stop()

    responses = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}
    assert 200 in statuses and 503 in statuses
    refused = responses[statuses.index(503)]
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"


def test_health_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    client.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))})
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'asr_requests_total{endpoint="/api/transcribe",status="200"} 1.0' in text
    assert "asr_audio_seconds_total" in text and "asr_queue_depth 0.0" in text
    assert "asr_batch_size_bucket" in text and "asr_request_latency_seconds_bucket" in text
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/transcribe", "/api/batch_async", "/api/jobs/{job_id}", "/api/jobs/{job_id}/download",
                 "/v1/audio/transcriptions", "/healthz", "/metrics"):  # fmt: skip
        assert path in paths


def test_page_and_batch_script_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text
    config = client.get("/config").json()
    assert "/batch_opt.js" in config.get("head", "")
    script = client.get("/batch_opt.js")
    assert script.status_code == 200 and "api/batch_async" in script.text


def test_api_token_protects_everything_but_healthz(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path
) -> None:
    settings = service_settings(tiny_model_dir, tmp_path, server={"api_token": "s3cret"})
    with TestClient(create_app(settings, engine=shared_engine)) as c:
        assert c.get("/healthz").status_code == 200
        refused = c.post("/api/transcribe", files={"file": ("a.wav", wav_bytes(1.0))})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert c.get("/").status_code == 401
        ok = c.post(
            "/api/transcribe",
            files={"file": ("a.wav", wav_bytes(1.0))},
            headers={"Authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 200
        login = c.get("/?token=s3cret", follow_redirects=False)
        assert login.status_code == 303 and "token" not in login.headers["location"]
        assert c.get("/").status_code == 200  # the cookie set by the redirect now opens the UI
        assert c.get("/api/info").status_code == 200


def test_no_gradio_queue_sends_single_file_events_directly(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path
) -> None:
    for queued in (True, False):
        settings = service_settings(tiny_model_dir, tmp_path / str(queued), server={"gradio_queue": queued})
        app = create_app(settings, engine=shared_engine)
        with TestClient(app) as c:
            deps = {d.get("api_name"): d for d in c.get("/config").json()["dependencies"]}
        assert deps["transcribe_single"]["queue"] is queued
        assert deps["run_batch"]["queue"] is True  # progress streaming needs the queue
        # Gradio never limits how many events run at once: the scheduler batches them.
        mount = next(r for r in app.routes if isinstance(r, Mount) and hasattr(r.app, "get_blocks"))
        assert all(fn.concurrency_limit is None for fn in mount.app.get_blocks().fns.values())


def test_transcribe_with_vad_and_punctuation_options_returns_sentences(client) -> None:
    from speech import SENTENCES, recording, require_espeak

    require_espeak()
    import io

    import soundfile as sf

    rec = recording(SENTENCES[:3], [1.5])
    buf = io.BytesIO()
    sf.write(buf, rec.audio, 16000, format="WAV", subtype="PCM_16")
    resp = client.post("/api/transcribe", files={"file": ("a.wav", buf.getvalue(), "audio/wav")},
                       data={"vad": "on", "punc": "on"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["applied"]["vad"] is True and body["sentences"]
    assert len(body["segments"]) >= 2  # the pause between sentences was found
    assert all(0 <= s["start_ms"] < s["end_ms"] <= len(rec.audio) / 16 + 1 for s in body["sentences"])
    # The test settings name no reachable punctuation model: reported, not a failure, no path shown.
    assert body["applied"]["punctuation"] is False
    assert [n["code"] for n in body["notices"]] == ["punctuation_unavailable"]
    assert "/" not in body["notices"][0]["message"]


def test_session_cookies_are_signed_with_the_token_and_expire() -> None:
    from asr.web.auth import TokenAuth

    auth = TokenAuth(None, token="s3cret", session_s=3600)  # type: ignore[arg-type]
    value = auth.new_session(now=1000)
    assert "s3cret" not in value
    assert auth.valid_session(value, now=1000 + 3599)
    assert not auth.valid_session(value, now=1000 + 3601)  # expired
    assert not auth.valid_session(value, now=1000 - 120)  # issued in the future
    assert not TokenAuth(None, token="other", session_s=3600).valid_session(value, now=1001)  # type: ignore[arg-type]
    issued, nonce, signature = value.split(".")
    assert not auth.valid_session(f"{int(issued) + 1}.{nonce}.{signature}", now=1001)
    for junk in ("", "s3cret", "a.b", "a.b.c.d", f"x.{nonce}.{signature}"):
        assert not auth.valid_session(junk, now=1001)


def test_docs_pages_load_their_assets_from_this_server(client: TestClient) -> None:
    """/docs and /redoc work offline: no CDN, every script and style is served here."""
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn." not in html and "https://" not in html
        assets = re.findall(r'(?:src|href)="(/[^"]+)"', html)
        assert any(a.endswith(".js") for a in assets), assets
        for asset in assets:
            resp = client.get(asset)
            assert resp.status_code == 200 and len(resp.content) > 1000, asset
