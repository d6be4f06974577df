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


# ---- several processes on one store (Ray Serve replicas): owners and leases -------------------


def _claims(db: Path, job_id: str) -> dict[int, tuple[str, str | None, int]]:
    """A job's files: idx -> (status, owner, claims), read straight from the database."""
    con = sqlite3.connect(db)
    try:
        return {r[0]: (r[1], r[2], r[3]) for r in con.execute(
            "SELECT idx, status, owner, claims FROM files WHERE job_id=?", (job_id,))}
    finally:
        con.close()


def test_two_owners_on_one_database_claim_each_file_once(tmp_path: Path) -> None:
    """Two stores (two connections, as two replicas hold) claiming concurrently from threads:
    every file claimed once, by one of them; one starting up does not take the other's files."""
    import threading

    db = tmp_path / "jobs.sqlite3"
    a = JobStore(db, tmp_path, owner="replica-a", lease_s=60)
    b = JobStore(db, tmp_path, owner="replica-b", lease_s=60)
    job_id = a.create_job([(f"{i}.wav", b"x") for i in range(60)], [])
    got: dict[str, list[int]] = {"replica-a": [], "replica-b": []}

    def claim_all(store: JobStore) -> None:
        while (task := store.claim_next()) is not None:
            got[store.owner].append(task.index)  # type: ignore[index]

    threads = [threading.Thread(target=claim_all, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["replica-a"] + got["replica-b"]) == list(range(60))  # each exactly once
    rows = _claims(db, job_id)
    assert all(status == "running" and claims == 1 for status, _, claims in rows.values())
    assert {i for i, (_, owner, _) in rows.items() if owner == "replica-a"} == set(got["replica-a"])

    # A third replica starting (or b restarting its worker) re-queues nothing: the leases are live.
    c = JobStore(db, tmp_path, owner="replica-c", lease_s=60)
    assert c.requeue_unfinished() == 0 and c.claim_next() is None
    # Only the owner stores a result; another's attempt changes nothing. (The store that claimed
    # more: a thread may start late and find every file taken, so either may hold none.)
    owner, other = (a, b) if len(got["replica-a"]) >= len(got["replica-b"]) else (b, a)
    mine = got[owner.owner][0]  # type: ignore[index]
    assert other.finish_file(job_id, mine, {"text": "other"}) is False
    assert other.fail_file(job_id, mine, "x", "y") is False
    assert owner.finish_file(job_id, mine, {"text": "owner"}) is True
    assert owner.get_job(job_id).files[mine].result == {"text": "owner"}  # type: ignore[union-attr]
    # A clean stop gives the owner's other files back at once.
    assert owner.release_claims() == len(got[owner.owner]) - 1  # type: ignore[index]
    assert c.claim_next() is not None
    for s in (a, b, c):
        s.close()


def test_an_expired_lease_goes_back_to_pending_and_the_old_owner_cannot_store(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    dead = JobStore(db, tmp_path, owner="dead", lease_s=0.3)
    live = JobStore(db, tmp_path, owner="live", lease_s=0.3)
    job_id = dead.create_job([("a.wav", b"a")], [])
    assert dead.claim_next() is not None
    assert live.requeue_expired() == 0  # still within the lease
    assert dead.renew_leases() == 1
    time.sleep(0.2)
    assert live.requeue_expired() == 0  # renewed: still alive
    time.sleep(0.4)  # no renewal for longer than the lease: the owner is taken for dead
    assert live.requeue_expired() == 1
    task = live.claim_next()
    assert task is not None and task.index == 0
    assert _claims(db, job_id)[0] == ("running", "live", 2)
    assert dead.finish_file(job_id, 0, {"text": "late"}) is False  # the claim is no longer its
    assert live.finish_file(job_id, 0, {"text": "ok"}) is True
    assert live.get_job(job_id).files[0].result == {"text": "ok"}  # type: ignore[union-attr]
    # A one-process store (no owner) keeps its start-up rule: everything 'running' back to pending.
    single = JobStore(db, tmp_path)
    job2 = single.create_job([("b.wav", b"b")], [])
    assert single.claim_next() is not None
    assert _claims(db, job2)[0] == ("running", None, 1)
    assert single.requeue_unfinished() == 1 and single.get_job(job2).files[0].status == "pending"  # type: ignore[union-attr]
    for s in (dead, live, single):
        s.close()


def test_worker_keeps_its_lease_while_it_runs_and_gives_files_back_on_stop(tmp_path: Path) -> None:
    """A file that takes longer than the lease is not taken by another replica meanwhile (the
    heartbeat thread renews it), is processed once; a stopped worker's unfinished file is
    pending again at once, for another replica."""
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db, tmp_path, owner="worker", lease_s=0.4)
    other = JobStore(db, tmp_path, owner="other", lease_s=0.4)
    calls: list[str] = []
    block = asyncio.Event()

    async def process(path: Path, hotwords: Sequence[str], options: Any = None) -> dict[str, Any]:
        calls.append(path.read_bytes().decode())
        if path.read_bytes() == b"forever":
            await block.wait()
        await asyncio.sleep(1.2)  # three leases
        return {"text": "done"}

    async def main() -> None:
        worker = JobWorker(store, process, concurrency=2)
        await worker.start()
        job_id = store.create_job([("slow.wav", b"slow")], [])
        worker.notify()
        for _ in range(12):
            await asyncio.sleep(0.1)
            assert await asyncio.to_thread(other.requeue_expired) == 0  # never taken from a live owner
        await _finish(store, worker, job_id)
        assert store.get_job(job_id).files[0].result == {"text": "done"}  # type: ignore[union-attr]
        assert _claims(db, job_id)[0] == ("done", "worker", 1)  # claimed once, by its one owner

        worker = JobWorker(store, process, concurrency=2)
        await worker.start()
        stuck = store.create_job([("stuck.wav", b"forever")], [])
        worker.notify()
        while _claims(db, stuck)[0][0] != "running" or len(calls) < 2:
            await asyncio.sleep(0.05)
        await worker.stop()
        assert store.get_job(stuck).files[0].status == "pending"  # type: ignore[union-attr]
        task = other.claim_next()
        assert task is not None and task.job_id == stuck

    asyncio.run(main())
    assert calls == ["slow", "forever"]  # each processed once


def test_a_second_connection_in_one_process_keeps_the_wal_shared(tmp_path: Path) -> None:
    """A process holds two connections to the database (the job store and the hotword sets).
    Opening the second must not drop the first's locks: then another process closing its own
    connection would take itself for the last, checkpoint and delete the WAL, and this process's
    later commits would go to an unlinked file that no other process (and no restart) sees."""
    import subprocess
    import sys

    from asr.service.jobs import connect_database

    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db, tmp_path)
    second = connect_database(db)
    count = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
             "print(c.execute('SELECT COUNT(*) FROM jobs').fetchone()[0]); c.close()")

    def seen_elsewhere() -> int:
        out = subprocess.run([sys.executable, "-c", count, str(db)], capture_output=True, text=True, timeout=60)
        return int(out.stdout)

    store.create_job([("a.wav", b"a")], [])
    assert seen_elsewhere() == 1  # that process opened and closed its connection
    store.create_job([("b.wav", b"b")], [])
    assert seen_elsewhere() == 2 and db.with_name(db.name + "-wal").exists()
    second.close()
    store.close()


def test_a_database_of_an_older_version_gets_the_claim_columns(tmp_path: Path) -> None:
    """A jobs.sqlite3 written before owners and leases: opened, it gains the columns, and its
    file left running is re-queued as before."""
    db = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, created_at REAL NOT NULL, hotwords TEXT NOT NULL);"
        "CREATE TABLE files (job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, idx INTEGER NOT NULL,"
        " name TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'pending',"
        " result TEXT, error_code TEXT, error TEXT, updated_at REAL NOT NULL, PRIMARY KEY (job_id, idx));"
        "INSERT INTO jobs VALUES ('j', 1.0, '[]');"
        "INSERT INTO files(job_id, idx, name, path, size, status, updated_at)"
        " VALUES ('j', 0, 'a', '/x', 1, 'running', 1.0);"
    )
    old.commit()
    old.close()
    store = JobStore(db, tmp_path)
    assert store.requeue_unfinished() == 1
    task = store.claim_next()
    assert task is not None and (task.job_id, task.index) == ("j", 0)
    store.close()
    columns = {row[1] for row in sqlite3.connect(db).execute("PRAGMA table_info(files)")}
    assert {"owner", "lease_until", "claims"} <= columns
