"""Timeouts, engine failures on one item, job retention, and the token on every route.

In-process app, real engine on the tiny model. Fault injection is limited to the engine's inner
forward pass (an OOM for one specific clip) and a gate in front of the engine (to hold a batch
while a request times out).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from starlette.routing import Mount

from asr.pipeline.audio import decode_audio
from asr.web import create_app

from .conftest import service_settings, wav_bytes


def wait_job(client: TestClient, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(f"/api/jobs/{job_id}").json())["status"] != "done":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


class GatedEngine:
    """The real engine behind a gate: calls wait until the test opens it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.gate = threading.Event()
        self.calls = 0

    def transcribe(self, audios: Sequence[np.ndarray], hotwords: Any = None) -> list[Any]:
        self.calls += 1
        assert self.gate.wait(30), "the test never opened the gate"
        return self.engine.transcribe(audios, hotwords)

    def info(self) -> dict[str, Any]:
        return self.engine.info()


@pytest.mark.slow
def test_request_timeout_is_504_and_later_requests_are_unharmed(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path
) -> None:
    gated = GatedEngine(shared_engine)
    settings = service_settings(
        tiny_model_dir, tmp_path, engine={"warmup": False}, limits={"request_timeout_s": 0.5}
    )
    data = [wav_bytes(1.0 + 0.3 * i, seed=i) for i in range(3)]
    want = [shared_engine.transcribe([decode_audio(d)], [[]])[0].text for d in data]
    with TestClient(create_app(settings, engine=gated)) as c:
        for d in data[:2]:  # the first holds the engine, the second waits in the queue behind it
            t0 = time.monotonic()
            resp = c.post("/api/transcribe", files={"file": ("a.wav", d)})
            assert resp.status_code == 504, resp.text
            assert resp.json()["error"]["code"] == "request_timeout"
            assert "limits.request_timeout_s" in resp.json()["error"]["message"]
            assert time.monotonic() - t0 < 5
        gated.gate.set()  # the abandoned work runs (or is skipped); nobody waits for it
        for d, text in zip(data, want, strict=True):
            resp = c.post("/api/transcribe", files={"file": ("a.wav", d)})
            assert resp.status_code == 200, resp.text
            assert resp.json()["text"] == text
        # Batch jobs have no request timeout: they wait for their turn.
        job = c.post("/api/batch_async", files=[("files", ("j.wav", data[0]))]).json()
        assert wait_job(c, job["job_id"])["files"][0]["result"]["text"] == want[0]


def _poison_forward(monkeypatch: pytest.MonkeyPatch, engine: Any, poisoned_frames: int) -> list[int]:
    """Make the engine's forward pass raise CUDA OOM for any batch holding the poisoned clip
    (recognised by its feature length, which no other clip in the test has)."""
    real = engine._forward
    hits: list[int] = []

    def forward(feats: torch.Tensor, feat_lens: torch.Tensor, hotwords: Any) -> Any:
        if poisoned_frames in feat_lens.tolist():
            hits.append(len(feat_lens))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(feats, feat_lens, hotwords)

    monkeypatch.setattr(engine, "_forward", forward)
    return hits


def _frames(engine: Any, audio: np.ndarray) -> int:
    _, lens = engine._features([audio])
    return int(lens[0])


def test_oom_on_one_item_fails_only_that_item(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # One batch whatever the lengths, as a GPU plans it (a CPU splits batches by padding too).
    monkeypatch.setattr("asr.engine.core._CPU_MAX_PADDING", 1.0)
    good = [wav_bytes(1.0, seed=i) for i in range(7)]
    poisoned = wav_bytes(2.7, seed=99)
    want = [shared_engine.transcribe([decode_audio(d)], [[]])[0].text for d in good]
    hits = _poison_forward(monkeypatch, shared_engine, _frames(shared_engine, decode_audio(poisoned)))
    settings = service_settings(tiny_model_dir, tmp_path, engine={"warmup": False})
    with TestClient(create_app(settings, engine=shared_engine)) as c, caplog.at_level(logging.INFO):
        files = [*good[:3], poisoned, *good[3:]]
        resp = c.post("/api/batch_async", files=[("files", (f"f{i}.wav", d)) for i, d in enumerate(files)])
        job_id = resp.json()["job_id"]
        job = wait_job(c, job_id)
        assert (job["done"], job["failed"]) == (7, 1)
        bad = job["files"][3]
        assert bad["status"] == "failed" and bad["error"]["code"] == "out_of_memory"
        assert "memory" in bad["error"]["message"]
        texts = [f["result"]["text"] for f in job["files"] if f["status"] == "done"]
        assert texts == want  # the companions of the failed batch were retried alone and succeeded
        logged = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
        assert any("file 3" in m and "f3.wav" in m and "out_of_memory" in m for m in logged), logged

        # A synchronous request for the same clip: 503 with Retry-After; the next one is fine.
        sync = c.post("/api/transcribe", files={"file": ("p.wav", poisoned)})
        assert sync.status_code == 503 and sync.headers["Retry-After"] == "5"
        assert sync.json()["error"]["code"] == "out_of_memory"
        ok = c.post("/api/transcribe", files={"file": ("g.wav", good[0])})
        assert ok.status_code == 200 and ok.json()["text"] == want[0]
    assert hits and max(hits) > 1 and min(hits) == 1  # failed in a batch, then alone


def test_finished_jobs_are_removed_after_the_retention_time(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path
) -> None:
    retention_s = 1.5
    settings = service_settings(
        tiny_model_dir, tmp_path / "data", engine={"warmup": False},
        server={"job_retention_h": retention_s / 3600},
    )  # fmt: skip
    orphan = tmp_path / "data" / "uploads" / "never-accepted"
    orphan.mkdir(parents=True)
    (orphan / "00000.upload").write_bytes(b"half a job")
    with TestClient(create_app(settings, engine=shared_engine)) as c:
        assert not orphan.exists()  # upload folders of jobs that never committed are removed at start
        job_id = c.post("/api/batch_async", files=[("files", ("a.wav", wav_bytes(0.8)))]).json()["job_id"]
        uploads = tmp_path / "data" / "uploads" / job_id
        wait_job(c, job_id)
        finished = time.monotonic()
        assert uploads.is_dir()
        # Kept for the retention time after finishing (the expiry loop runs every retention/4).
        while c.get(f"/api/jobs/{job_id}").status_code == 200:
            assert time.monotonic() - finished < retention_s + 5
            time.sleep(0.05)
        assert time.monotonic() - finished >= retention_s * 0.9
        assert c.get(f"/api/jobs/{job_id}").json()["error"]["code"] == "job_not_found"
        assert c.get(f"/api/jobs/{job_id}/download").status_code == 404
        assert not uploads.exists()


# ---- the API token ------------------------------------------------------------------------------


def _routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route: ours and the mounted Gradio app's."""
    out: list[tuple[str, str]] = []

    def walk(routes: Any, prefix: str) -> None:
        for r in routes:
            if isinstance(r, Mount):
                walk(r.routes, prefix + r.path)
            elif hasattr(r, "original_router"):  # FastAPI's included routers
                context = getattr(r, "include_context", None)
                walk(r.original_router.routes, prefix + getattr(context, "prefix", ""))
            elif hasattr(r, "methods") and r.methods:
                path = (prefix + r.path).replace("//", "/")
                path = path.replace("{job_id}", "job").replace("{path:path}", "x").replace("{path}", "x")
                for method in sorted(r.methods - {"HEAD", "OPTIONS"}):
                    out.append((method, path.replace("{", "").replace("}", "")))

    walk(app.routes, "")
    return out


def test_token_guards_every_route_but_healthz(
    tiny_model_dir: Path, shared_engine: Any, tmp_path: Path
) -> None:
    settings = service_settings(
        tiny_model_dir, tmp_path, engine={"warmup": False}, server={"api_token": "t0k"}
    )
    app = create_app(settings, engine=shared_engine)
    routes = _routes(app)
    paths = {p for _, p in routes}
    # Gradio's own routes are covered too: uploads, files, the queue, the config.
    assert {"/gradio_api/upload", "/config", "/api/jobs/job/download", "/v1/audio/transcriptions"} <= paths
    assert any(p.startswith("/gradio_api/queue") for p in paths)
    assert any("file=" in p or p.startswith("/gradio_api/file") for p in paths)
    auth = {"Authorization": "Bearer t0k"}
    with TestClient(app) as c:
        job_id = c.post(
            "/api/batch_async", files=[("files", ("a.wav", wav_bytes(0.8)))], headers=auth
        ).json()["job_id"]
        wait_job_auth = time.monotonic() + 30
        while c.get(f"/api/jobs/{job_id}", headers=auth).json()["status"] != "done":
            assert time.monotonic() < wait_job_auth
            time.sleep(0.05)
        open_routes = []
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "asr_session=wrong"}):
                resp = c.request(method, path, headers=headers)
                if resp.status_code != 401:
                    open_routes.append((method, path, resp.status_code))
        assert open_routes == [("GET", "/healthz", 200)] * 3
        # With the token the job's download works; without it, not even with the right id.
        assert c.get(f"/api/jobs/{job_id}/download").status_code == 401
        assert c.get(f"/api/jobs/{job_id}/download", headers=auth).status_code == 200
        assert c.get(f"/api/jobs/{job_id}/download?token=t0k", follow_redirects=False).status_code == 303


def test_gradio_routes_do_not_read_paths_the_client_names(
    client: TestClient, tmp_path: Path, shared_engine: Any
) -> None:
    """The UI's file inputs take paths from the client; Gradio must refuse files it did not store."""
    secret = tmp_path / "outside" / "secret.wav"
    secret.parent.mkdir()
    secret.write_bytes(wav_bytes(1.0, seed=5))
    payload = {"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, "", True, "txt"]}
    resp = client.post("/gradio_api/call/transcribe_single", json=payload)
    if resp.status_code == 200:
        event_id = resp.json()["event_id"]
        stream = client.get(f"/gradio_api/call/transcribe_single/{event_id}").text
        assert "event: error" in stream, stream
        text = shared_engine.transcribe([decode_audio(secret.read_bytes())], [[]])[0].text
        assert not text or text not in stream
    else:
        assert resp.status_code in (400, 403, 422), resp.text
    # Nor can a Gradio file route serve it.
    for route in (f"/gradio_api/file={secret}", f"/file={secret}"):
        assert client.get(route).status_code in (403, 404)
