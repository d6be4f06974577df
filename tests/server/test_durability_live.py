"""A batch job survives SIGKILL of the server in the middle of its work: real server process on
loopback, tiny model. Every accepted file is transcribed, and its result is stored exactly once."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from asr.pipeline.audio import decode_audio

from .conftest import start_server, wav_bytes

N_FILES = 100


def _wait_done(url: str, job_ids: list[str], timeout_s: float = 180) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = {j: httpx.get(f"{url}/api/jobs/{j}", timeout=30).json() for j in job_ids}
        if all(job["status"] == "done" for job in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, {j: (v["done"], v["pending"]) for j, v in jobs.items()}
        time.sleep(0.2)

# The reference texts come from the fp32 engine fixture; the cpu profile's default is int8.
FP32 = {"ASR_ENGINE__DTYPE": "fp32"}


@pytest.mark.slow
def test_batch_job_survives_sigkill_mid_job(tiny_model_dir: Path, engine: Any, tmp_path: Path) -> None:
    data = [wav_bytes(2.0 + 0.5 * (i % 4), seed=i) for i in range(N_FILES)]
    extra = [wav_bytes(1.0, seed=1000 + i) for i in range(5)]
    want = [t.text for t in engine.transcribe([decode_audio(d) for d in data + extra], [[]] * (N_FILES + 5))]

    # A small batch size keeps a few files in flight at a time, so the job takes a few seconds.
    server = start_server(tiny_model_dir, tmp_path, args=["--max-batch-size", "4"], env=FP32)
    try:
        files = [("files", (f"f{i:03d}.wav", d)) for i, d in enumerate(data)]
        job_a = httpx.post(server.url + "/api/batch_async", files=files, timeout=120).json()["job_id"]
        # Kill when the job status shows some files done and many still pending.
        deadline = time.monotonic() + 60
        while True:
            status = httpx.get(f"{server.url}/api/jobs/{job_a}", timeout=10).json()
            if status["done"] >= 10 and status["pending"] >= 30:
                break
            assert status["pending"] >= 30, f"the job ran too fast to be interrupted: {status['done']} done"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = {f["index"]: f["result"] for f in status["files"] if f["status"] == "done"}
        # A second job is accepted (202) and the server dies right after answering.
        resp = httpx.post(
            server.url + "/api/batch_async", files=[("files", (f"x{i}.wav", d)) for i, d in enumerate(extra)]
        )
        assert resp.status_code == 202
        job_b = resp.json()["job_id"]
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    finally:
        server.stop()
    assert server.process.returncode == -signal.SIGKILL

    restarted = start_server(tiny_model_dir, tmp_path, args=["--max-batch-size", "4"], env=FP32)
    try:
        jobs = _wait_done(restarted.url, [job_a, job_b])
    finally:
        restarted.stop()
    assert "re-queued" in restarted.log()  # files that were running at the kill went back to pending

    a, b = jobs[job_a], jobs[job_b]
    assert (a["total"], a["done"], a["failed"]) == (N_FILES, N_FILES, 0)
    assert (b["total"], b["done"], b["failed"]) == (5, 5, 0)
    assert [f["result"]["text"] for f in a["files"] + b["files"]] == want
    assert [f["name"] for f in a["files"]] == [f"f{i:03d}.wav" for i in range(N_FILES)]
    # Files finished before the kill kept their stored result: nothing was redone or overwritten.
    assert 10 <= len(before) <= N_FILES - 30
    for index, result in before.items():
        assert a["files"][index]["result"] == result

    # The database itself: one row per accepted file, each done with one result, nothing pending.
    db = sqlite3.connect(tmp_path / "data" / "jobs.sqlite3")
    rows = db.execute("SELECT job_id, idx, status, result IS NOT NULL FROM files").fetchall()
    assert len(rows) == N_FILES + 5 == len({(j, i) for j, i, _, _ in rows})
    assert {(s, has) for _, _, s, has in rows} == {("done", 1)}
    assert sorted(i for j, i, _, _ in rows if j == job_a) == list(range(N_FILES))
    uploads = tmp_path / "data" / "uploads"
    assert len(list((uploads / job_a).iterdir())) == N_FILES and len(list((uploads / job_b).iterdir())) == 5
