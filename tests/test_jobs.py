"""The durable job store: files on disk, state in SQLite (WAL), re-queue after a crash."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asr.errors import AudioError
from asr.service.jobs import JobStore, JobWorker


def test_job_is_durable_and_resumable(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db" / "jobs.sqlite3", tmp_path / "data")
    job_id = store.create_job([("a.wav", b"aaa"), ("b.wav", b"bbbb")], ["北京"])
    assert len(job_id) >= 20
    mode = sqlite3.connect(tmp_path / "db" / "jobs.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"

    first = store.claim_next()
    assert first is not None and first.index == 0 and first.hotwords == ("北京",)
    assert first.path.read_bytes() == b"aaa" and first.path.parent.name == job_id
    store.close()  # the process dies while file 0 is 'running'

    store = JobStore(tmp_path / "db" / "jobs.sqlite3", tmp_path / "data")
    assert store.requeue_unfinished() == 1
    job = store.get_job(job_id)
    assert job is not None and [f.status for f in job.files] == ["pending", "pending"]
    a, b = store.claim_next(), store.claim_next()
    assert (a.index, b.index) == (0, 1) and store.claim_next() is None  # type: ignore[union-attr]

    assert store.finish_file(job_id, 0, {"text": "一"}) is True
    assert store.finish_file(job_id, 0, {"text": "二"}) is False  # stored once
    assert store.fail_file(job_id, 1, "invalid_audio", "bad") is True
    job = store.get_job(job_id)
    assert job is not None and job.status == "done"
    assert job.files[0].result == {"text": "一"} and job.files[1].error == "bad"
    assert store.get_job("nope") is None


def test_worker_processes_files_concurrently_and_isolates_failures(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3", tmp_path)
    in_flight = 0
    peak = 0

    async def process(path: Path, hotwords: Sequence[str], options: dict[str, Any]) -> dict[str, Any]:
        nonlocal in_flight, peak
        data = path.read_bytes()  # the worker hands over the stored file, not its bytes
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        if data == b"bad":
            raise AudioError("The audio data could not be decoded.", code="corrupt_audio")
        return {"text": data.decode(), "hotwords": list(hotwords)}

    async def main() -> None:
        worker = JobWorker(store, process, concurrency=4)
        await worker.start()
        files = [(f"{i}.wav", b"bad" if i == 3 else f"t{i}".encode()) for i in range(10)]
        job_id = store.create_job(files, ["词"])
        await _finish(store, worker, job_id)
        job = store.get_job(job_id)
        assert job is not None and job.status == "done"
        assert job.files[3].status == "failed" and job.files[3].error_code == "corrupt_audio"
        assert [f.result["text"] for f in job.files if f.result] == [f"t{i}" for i in range(10) if i != 3]

    asyncio.run(main())
    assert 1 < peak <= 4


def test_finished_jobs_expire_with_their_uploads(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3", tmp_path)
    done = store.create_job([("a.wav", b"a")], [])
    open_job = store.create_job([("b.wav", b"b")], [])
    task = store.claim_next()
    assert task is not None and task.job_id == done
    store.finish_file(done, 0, {"text": ""})
    assert store.delete_finished_before(time.time() - 3600) == []  # too young
    assert store.delete_finished_before(time.time() + 1) == [done]  # the unfinished job stays
    assert store.get_job(done) is None and not (tmp_path / "uploads" / done).exists()
    assert store.get_job(open_job) is not None


def test_worker_bounds_the_bytes_in_flight(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3", tmp_path)
    in_flight: list[int] = []
    peak_bytes = 0

    async def process(path: Path, hotwords: Sequence[str], options: Any = None) -> dict[str, Any]:
        nonlocal peak_bytes
        data = path.read_bytes()
        in_flight.append(len(data))
        peak_bytes = max(peak_bytes, sum(in_flight))
        await asyncio.sleep(0.02)
        in_flight.remove(len(data))
        return {"text": str(len(data))}

    async def main() -> None:
        # 25-byte budget: two 10-byte files at once, the 40-byte file alone.
        worker = JobWorker(store, process, concurrency=8, max_inflight_bytes=25)
        await worker.start()
        files = [(f"{i}.wav", b"x" * (40 if i == 3 else 10)) for i in range(8)]
        job_id = store.create_job(files, [])
        await _finish(store, worker, job_id)
        job = store.get_job(job_id)
        assert job is not None and job.count("done") == 8

    asyncio.run(main())
    assert peak_bytes == 40  # the large file ran, alone; the small ones two at a time


async def _finish(store, worker, job_id: str) -> None:
    """Wake the worker, wait (bounded) until the job is done, stop the worker."""
    worker.notify()
    for _ in range(200):
        job = store.get_job(job_id)
        if job is not None and job.status == "done":
            break
        await worker.wait_for_change(0.5)
    await worker.stop()


def test_orphan_uploads_being_written_by_another_process_are_kept(tmp_path: Path) -> None:
    """With several HTTP workers, worker 0's start-up must not delete the files of a job another
    worker is storing right now (written, not yet committed): only folders idle for
    `min_age_s` go."""
    import os

    store = JobStore(tmp_path / "jobs.sqlite3", tmp_path)
    kept = store.create_job([("a.wav", b"RIFF")], [])
    fresh, old = store.upload_dir / "fresh", store.upload_dir / "old"
    for folder in (fresh, old):
        folder.mkdir()
        (folder / "00000.upload").write_bytes(b"x")
    past = time.time() - 7200
    for path in (old / "00000.upload", old):
        os.utime(path, (past, past))
    assert store.remove_orphan_uploads(min_age_s=3600) == 1
    assert fresh.is_dir() and not old.exists() and (store.upload_dir / kept).is_dir()
    assert store.remove_orphan_uploads() == 1 and not fresh.exists()
    store.close()
