"""Durable batch jobs: uploads on disk, job and per-file state in SQLite, one async worker.

A job is accepted only after every uploaded file is written (and fsynced) under a generated
name in the data directory and the job's rows are committed, so a job that was answered with an
id survives a crash or SIGKILL. SQLite runs in WAL mode: readers (status polls) never block the
worker's writes. On start-up, files that were in progress are put back to pending and the worker
carries on; each file's result is stored once (a finished file is never overwritten).

Several processes may share one store (Ray Serve replicas, asr/serve_ray.py): each then opens it
with an `owner` id. A claim records the owner and a lease (`lease_until`) that the owner's worker
renews from a thread while it lives; only a claim whose lease has run out (its owner died or hung
that long) goes back to pending, so one replica starting never takes a file another one is
running. A store without an owner (one service process) keeps the old rule: everything left
'running' is re-queued at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from asr.errors import ASRError, LimitError

log = logging.getLogger(__name__)

FileStatus = Literal["pending", "running", "done", "failed"]
JobStatus = Literal["queued", "running", "done"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    hotwords    TEXT NOT NULL               -- JSON list of plain words
);
CREATE TABLE IF NOT EXISTS files (
    job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    name        TEXT NOT NULL,              -- the client's file name, for display and the zip only
    path        TEXT NOT NULL,              -- generated name under the data directory
    size        INTEGER NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    result      TEXT,                       -- JSON, set once when the file is done
    error_code  TEXT,
    error       TEXT,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS job_options (     -- per-job processing options (VAD, punctuation, ...)
    job_id      TEXT PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    options     TEXT NOT NULL               -- JSON object
);
CREATE INDEX IF NOT EXISTS files_status ON files(status, job_id, idx);
-- (files.owner, files.lease_until, files.claims: added by JobStore._migrate, for older databases)
CREATE INDEX IF NOT EXISTS jobs_newest ON jobs(created_at, id);
"""


@dataclass(frozen=True)
class FileTask:
    """One file of a job, as handed to the worker."""

    job_id: str
    index: int
    name: str
    path: Path
    hotwords: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    size: int = 0


@dataclass(frozen=True)
class FileState:
    index: int
    name: str
    size: int
    status: FileStatus
    result: dict[str, Any] | None
    error_code: str | None
    error: str | None


@dataclass(frozen=True)
class JobState:
    id: str
    created_at: float
    hotwords: tuple[str, ...]
    files: tuple[FileState, ...]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.files)

    def count(self, status: FileStatus) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def status(self) -> JobStatus:
        if all(f.status in ("done", "failed") for f in self.files):
            return "done"
        if all(f.status == "pending" for f in self.files):
            return "queued"
        return "running"


@dataclass(frozen=True)
class JobSummary:
    """One row of the job list: counts only, no results."""

    id: str
    created_at: float
    total: int
    done: int
    failed: int
    waiting: int
    running: int
    first_file: str

    @property
    def pending(self) -> int:
        """Files not finished yet (waiting or running), as GET /api/jobs/{id} counts them."""
        return self.waiting + self.running

    @property
    def status(self) -> JobStatus:
        if self.done + self.failed == self.total:
            return "done"
        return "queued" if self.waiting == self.total else "running"


def connect_database(db_path: Path) -> sqlite3.Connection:
    """The service's SQLite database (jobs, hotword sets): the file and its WAL files 0600, WAL
    mode, usable from several threads (callers hold their own lock around every use)."""
    # SQLite gives its -wal and -shm files the database file's permissions. Created here only
    # when missing (O_EXCL: an existing file is never opened here): closing any descriptor of the
    # database file drops every POSIX lock this process holds on it, those of its connections
    # already open included (SQLite's "how to corrupt" 2.2). Without their shared lock, another
    # process closing its last connection takes itself for the last one, checkpoints and deletes
    # the WAL: this process's later commits go to an unlinked file, seen by no one and lost.
    # (A process opens it twice: the job store and the hotword sets.)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    for path in (db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))):
        if path.exists():
            path.chmod(0o600)
    # timeout: how long a write waits for another process's write transaction (HTTP workers,
    # Serve replicas and their lease threads share the file) before "database is locked".
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode loses nothing when the process dies; only a power cut can drop
    # the last commits, which is the trade every WAL service makes for write speed.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Connection]:
    """One write transaction under `lock` (BEGIN IMMEDIATE: the write lock is taken at once)."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class JobStore:
    """SQLite-backed job state plus the upload directory. Safe to use from several threads."""

    def __init__(
        self, db_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
        owner: str | None = None, lease_s: float = 60.0,
    ) -> None:  # fmt: skip
        """``owner``: this process shares the store with others that run jobs too (see the module
        docstring); its claims carry this id and a lease of ``lease_s`` seconds."""
        self.db_path = Path(db_path)
        self.upload_dir = Path(data_dir) / "uploads"
        # Uploads and results are the users' data: folders 0700, files 0600, whatever the umask.
        # Folders we own are tightened if an older version made them more open; the folders
        # given in the settings are only created so, never changed (they may be shared).
        for folder in (self.db_path.parent, Path(data_dir)):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.upload_dir.mkdir(exist_ok=True, mode=0o700)
        self.upload_dir.chmod(0o700)
        self._lock = threading.Lock()
        self._db = connect_database(self.db_path)
        self._db.executescript(_SCHEMA)
        self.owner = owner
        self.lease_s = lease_s
        self._migrate()

    def _migrate(self) -> None:
        """Add the claim columns to a database made by an older version. Checked inside a write
        transaction: several processes may open the store at once, and only one may add them."""
        with self._tx() as db:
            have = {row[1] for row in db.execute("PRAGMA table_info(files)")}
            for column, kind in (("owner", "TEXT"), ("lease_until", "REAL"), ("claims", "INTEGER NOT NULL DEFAULT 0")):
                if column not in have:
                    db.execute(f"ALTER TABLE files ADD COLUMN {column} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with transaction(self._db, self._lock) as db:
            yield db

    def create_job(
        self,
        files: Sequence[tuple[str, UploadSource]],
        hotwords: Sequence[str],
        options: dict[str, Any] | None = None,
        *,
        check_file: Callable[[int, str], None] | None = None,
        max_total_bytes: int | None = None,
    ) -> str:
        """Write the uploads to disk, record the job, and return its unguessable id.

        ``files`` holds bytes or binary file objects (copied in blocks). ``options`` (JSON-ready)
        are handed to the worker with every file of the job. ``check_file(size, name)`` may raise
        to refuse a file as soon as it grows past a limit; ``max_total_bytes`` bounds the whole
        job. A refused job leaves nothing behind.
        """
        job_id = secrets.token_urlsafe(16)
        job_dir = self.upload_dir / job_id
        job_dir.mkdir(mode=0o700)
        now = time.time()
        rows = []
        total = 0
        try:
            for idx, (name, source) in enumerate(files):
                shown = display_name(name, idx)
                # Generated names only: the client's name never touches the file system.
                path = job_dir / f"{idx:05d}.upload"
                size = 0
                with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
                    for block in _blocks(source):
                        size += len(block)
                        total += len(block)
                        if check_file is not None:
                            check_file(size, shown)
                        if max_total_bytes is not None and total > max_total_bytes:
                            raise LimitError(
                                f"The job's files add up to more than {max_total_bytes / 1048576:g} MB "
                                "(limits.max_job_mb)."
                            )
                        fh.write(block)
                    fh.flush()
                    os.fsync(fh.fileno())
                rows.append((job_id, idx, shown, str(path), size, now))
            _fsync_dir(job_dir)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs(id, created_at, hotwords) VALUES (?, ?, ?)",
                (job_id, now, json.dumps(list(hotwords), ensure_ascii=False)),
            )
            db.executemany(
                "INSERT INTO files(job_id, idx, name, path, size, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            if options:
                db.execute(
                    "INSERT INTO job_options(job_id, options) VALUES (?, ?)",
                    (job_id, json.dumps(options, ensure_ascii=False)),
                )
        return job_id

    def remove_orphan_uploads(self, min_age_s: float = 0.0) -> int:
        """Delete upload folders without a job row (the process died between writing the files
        and committing the job, so the client never got an id). Call only at start-up.

        ``min_age_s``: keep folders written to more recently (several processes share the store,
        and another one may be writing a job's files right now)."""
        with self._lock:
            known = {row[0] for row in self._db.execute("SELECT id FROM jobs")}
        removed = 0
        cutoff = time.time() - min_age_s
        for entry in self.upload_dir.iterdir():
            if entry.is_dir() and entry.name not in known:
                if min_age_s > 0 and _last_write(entry) > cutoff:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        return removed

    def requeue_unfinished(self) -> int:
        """At start-up: put files that were being processed when the service stopped back to
        pending. With an owner, only claims whose lease ran out (`requeue_expired`): the others
        belong to processes that are alive."""
        if self.owner is not None:
            return self.requeue_expired()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE files SET status='pending', owner=NULL, updated_at=? WHERE status='running'", (time.time(),)
            )
            return cur.rowcount

    def requeue_expired(self) -> int:
        """Put files whose claim's lease has run out back to pending: their owner died (or has
        not renewed for a whole lease). A claim with no lease (a one-process service's, or an
        older version's) counts as expired: such a process does not share the store."""
        with self._tx() as db:
            now = time.time()
            cur = db.execute(
                "UPDATE files SET status='pending', owner=NULL, lease_until=NULL, updated_at=? "
                "WHERE status='running' AND (lease_until IS NULL OR lease_until < ?)",
                (now, now),
            )
            return cur.rowcount

    def renew_leases(self) -> int:
        """Extend the leases of this owner's running files (its heartbeat); returns how many."""
        if self.owner is None:
            return 0
        with self._tx() as db:
            cur = db.execute(
                "UPDATE files SET lease_until=? WHERE status='running' AND owner=?",
                (time.time() + self.lease_s, self.owner),
            )
            return cur.rowcount

    def release_claims(self) -> int:
        """Put this owner's running files back to pending (a clean stop: another process takes
        them at once instead of after the lease)."""
        if self.owner is None:
            return 0
        with self._tx() as db:
            cur = db.execute(
                "UPDATE files SET status='pending', owner=NULL, lease_until=NULL, updated_at=? "
                "WHERE status='running' AND owner=?",
                (time.time(), self.owner),
            )
            return cur.rowcount

    def claim_next(self) -> FileTask | None:
        """Mark the oldest pending file as running and return it, or None when none waits."""
        with self._tx() as db:
            row = db.execute(
                "SELECT f.job_id, f.idx, f.name, f.path, j.hotwords, o.options, f.size "
                "FROM files f JOIN jobs j ON j.id = f.job_id "
                "LEFT JOIN job_options o ON o.job_id = f.job_id WHERE f.status='pending' "
                "ORDER BY j.created_at, f.job_id, f.idx LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            # Selected and marked in one write transaction (BEGIN IMMEDIATE holds SQLite's write
            # lock across processes): two stores on one database never claim the same file.
            now = time.time()
            db.execute(
                "UPDATE files SET status='running', owner=?, lease_until=?, claims=claims+1, updated_at=? "
                "WHERE job_id=? AND idx=?",
                (self.owner, now + self.lease_s if self.owner is not None else None, now, row[0], row[1]),
            )
        options = json.loads(row[5]) if row[5] else {}
        return FileTask(row[0], row[1], row[2], Path(row[3]), tuple(json.loads(row[4])), options, row[6])

    @property
    def _ours(self) -> str:
        # With an owner, a result is stored only while the claim is still this process's: one
        # whose lease ran out (and was re-queued, maybe claimed by another) is not written.
        return " AND owner=?" if self.owner is not None else ""

    @property
    def _owner_arg(self) -> tuple[str, ...]:
        return (self.owner,) if self.owner is not None else ()

    def finish_file(self, job_id: str, index: int, result: dict[str, Any]) -> bool:
        """Store a file's result; returns False if it was already finished (stored once), or,
        with an owner, if the claim is no longer this owner's."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE files SET status='done', result=?, lease_until=NULL, updated_at=? "
                f"WHERE job_id=? AND idx=? AND status NOT IN ('done', 'failed'){self._ours}",
                (json.dumps(result, ensure_ascii=False), time.time(), job_id, index, *self._owner_arg),
            )
            return cur.rowcount == 1

    def fail_file(self, job_id: str, index: int, code: str, message: str) -> bool:
        """Record why a file failed; the rest of its job goes on."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE files SET status='failed', error_code=?, error=?, lease_until=NULL, updated_at=? "
                f"WHERE job_id=? AND idx=? AND status NOT IN ('done', 'failed'){self._ours}",
                (code, message, time.time(), job_id, index, *self._owner_arg),
            )
            return cur.rowcount == 1

    def get_job(self, job_id: str) -> JobState | None:
        with self._lock:
            job = self._db.execute(
                "SELECT j.id, j.created_at, j.hotwords, o.options FROM jobs j "
                "LEFT JOIN job_options o ON o.job_id = j.id WHERE j.id=?", (job_id,)
            ).fetchone()
            if job is None:
                return None
            rows = self._db.execute(
                "SELECT idx, name, size, status, result, error_code, error "
                "FROM files WHERE job_id=? ORDER BY idx",
                (job_id,),
            ).fetchall()
        files = tuple(
            FileState(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], r[6]) for r in rows
        )
        return JobState(job[0], job[1], tuple(json.loads(job[2])), files, json.loads(job[3]) if job[3] else {})

    def list_jobs(self, limit: int, before: tuple[float, str] | None = None) -> list[JobSummary]:
        """Jobs newest first, at most `limit`, starting after the job `before` = (created_at, id)
        of the last one a previous page ended with (a cursor: pages stay right while new jobs
        arrive). Counted by SQLite: no result is read."""
        where, args = "", [limit]
        if before is not None:
            where = "WHERE (j.created_at < ? OR (j.created_at = ? AND j.id < ?))"
            args = [before[0], before[0], before[1], limit]
        with self._lock:
            rows = self._db.execute(
                "SELECT j.id, j.created_at, COUNT(f.idx), "
                "SUM(f.status='done'), SUM(f.status='failed'), SUM(f.status='pending'), SUM(f.status='running'), "
                "(SELECT name FROM files WHERE job_id=j.id AND idx=0) "
                f"FROM jobs j JOIN files f ON f.job_id = j.id {where} "
                "GROUP BY j.id ORDER BY j.created_at DESC, j.id DESC LIMIT ?",
                args,
            ).fetchall()
        return [JobSummary(r[0], r[1], int(r[2]), *(int(n or 0) for n in r[3:7]), r[7] or "") for r in rows]

    def result_totals(self, job_id: str) -> tuple[int, int] | None:
        """(files, bytes of stored results) of a job, or None when there is no such job.

        Counted by SQLite without reading the results into Python (zip downloads check their
        limits with it before any work)."""
        with self._lock:
            row = self._db.execute(
                "SELECT (SELECT COUNT(*) FROM jobs WHERE id=?), COUNT(*), "
                "COALESCE(SUM(LENGTH(CAST(result AS BLOB))), 0) FROM files WHERE job_id=?",
                (job_id, job_id),
            ).fetchone()
        return None if row[0] == 0 else (int(row[1]), int(row[2]))

    def iter_files(self, job_id: str, *, page: int = 16) -> Iterator[FileState]:
        """A job's files in order, ``page`` rows at a time, so a large job's results are never
        all in memory at once (and the store's lock is held only per page)."""
        after = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT idx, name, size, status, result, error_code, error FROM files "
                    "WHERE job_id=? AND idx>? ORDER BY idx LIMIT ?",
                    (job_id, after, page),
                ).fetchall()
            if not rows:
                return
            for r in rows:
                yield FileState(r[0], r[1], r[2], r[3], json.loads(r[4]) if r[4] else None, r[5], r[6])
            after = rows[-1][0]

    def delete_finished_before(self, cutoff: float) -> list[str]:
        """Delete jobs whose last file finished before ``cutoff`` (epoch seconds), uploads included.

        Counting from the finish (not the creation) keeps a long job's results downloadable for
        the whole retention time.
        """
        with self._tx() as db:
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE NOT EXISTS "
                    "(SELECT 1 FROM files WHERE files.job_id = jobs.id AND status IN ('pending', 'running')) "
                    "AND COALESCE((SELECT MAX(updated_at) FROM files WHERE files.job_id = jobs.id), "
                    "created_at) < ?",
                    (cutoff,),
                )
            ]
            db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in ids])
        for job_id in ids:
            shutil.rmtree(self.upload_dir / job_id, ignore_errors=True)
        return ids

    def pending_count(self) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM files WHERE status IN ('pending', 'running')"
                ).fetchone()[0]
            )


UploadSource = bytes | BinaryIO
_COPY_BLOCK = 1 << 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME = 255


def _blocks(source: UploadSource) -> Iterator[bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield bytes(source)
        return
    while block := source.read(_COPY_BLOCK):
        yield block


def display_name(name: str | None, index: int) -> str:
    """The client's file name as shown in status and zip listings: control characters (NUL
    included) removed, at most 255 characters. It is never used as a path."""
    cleaned = _CONTROL.sub("", name or "").strip()
    if len(cleaned) > _MAX_NAME:
        cleaned = cleaned[: _MAX_NAME - 1] + "…"
    return cleaned or f"file{index + 1}"


def _last_write(folder: Path) -> float:
    """When the folder or a file in it was last written (0 for one that has just gone)."""
    try:
        return max([folder.stat().st_mtime, *(f.stat().st_mtime for f in folder.iterdir())])
    except OSError:
        return 0.0


def _fsync_dir(path: Path) -> None:
    # The directory entry must be durable too, or a crash can lose a freshly written file.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# (the stored file, hotwords, the job's options) -> JSON-ready result
ProcessFn = Callable[[Path, Sequence[str], dict[str, Any]], Awaitable[dict[str, Any]]]


class JobWorker:
    """Feeds pending files to ``process`` (decode + scheduler), ``concurrency`` at a time.

    Several files are in flight at once so the scheduler can batch them with each other and with
    interactive requests. The worker sleeps on an event while nothing is pending.
    """

    def __init__(
        self,
        store: JobStore,
        process: ProcessFn,
        *,
        concurrency: int = 16,
        retention_s: float | None = None,
        max_inflight_bytes: int | None = None,
        poll_s: float | None = None,
        orphan_min_age_s: float = 0.0,
    ) -> None:
        self.store = store
        self._orphan_min_age_s = orphan_min_age_s  # see JobStore.remove_orphan_uploads
        self._poll_s = poll_s  # look for pending files this often even without notify()
        self._retention_s = retention_s
        self._process = process
        self._slots = asyncio.Semaphore(max(1, concurrency))
        # Files in flight are read into memory and decoded: besides the count, their stored
        # sizes are bounded too (one file always runs, however large).
        self._max_inflight_bytes = max_inflight_bytes
        self._inflight_bytes = 0
        self._room = asyncio.Event()  # set whenever a file in flight finishes
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._heartbeat: LeaseHeartbeat | None = None

    async def start(self) -> None:
        orphans = self.store.remove_orphan_uploads(self._orphan_min_age_s)
        if orphans:
            log.info("removed %d upload folder(s) of jobs that were never accepted", orphans)
        requeued = self.store.requeue_unfinished()
        if requeued:
            log.info("re-queued %d unfinished file(s) from before the restart", requeued)
        if self.store.owner is not None:
            self._heartbeat = LeaseHeartbeat(self.store, asyncio.get_running_loop(), self.notify)
            self._heartbeat.start()
        self._task = asyncio.create_task(self._run(), name="asr-job-worker")
        if self._retention_s is not None:
            self._cleanup = asyncio.create_task(self._expire_loop(self._retention_s), name="asr-job-expiry")

    async def _expire_loop(self, retention_s: float) -> None:
        while True:
            removed = await asyncio.to_thread(self.store.delete_finished_before, time.time() - retention_s)
            if removed:
                log.info("deleted %d finished job(s) older than %.0f h", len(removed), retention_s / 3600)
            await asyncio.sleep(min(3600.0, retention_s / 4))

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._cleanup, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._cleanup = None
        if self._heartbeat is not None:
            # A shared store: the files this process was running go back to pending now (their
            # tasks were just cancelled), for the other processes to take without waiting for
            # the lease to run out. A one-process store leaves them 'running' for its next start.
            self._heartbeat.stop()
            self._heartbeat = None
            released = await asyncio.to_thread(self.store.release_claims)
            if released:
                log.info("gave back %d unfinished job file(s) to the shared store", released)

    def notify(self) -> None:
        """Tell the worker new files are pending."""
        self._wake.set()

    async def wait_for_change(self, timeout_s: float) -> None:
        """Wait until any file finishes (or ``timeout_s`` passes); for progress displays."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

    def _signal_change(self) -> None:
        # Replace the event so each waiter wakes once per change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            self._wake.clear()
            task = await asyncio.to_thread(self.store.claim_next)
            if task is None:
                self._slots.release()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
                continue
            while not self._has_room(task.size):
                self._room.clear()
                await self._room.wait()
            self._inflight_bytes += task.size
            worker = asyncio.create_task(self._handle(task))
            self._inflight.add(worker)
            worker.add_done_callback(self._inflight.discard)

    def _has_room(self, size: int) -> bool:
        if self._max_inflight_bytes is None or self._inflight_bytes == 0:
            return True
        return self._inflight_bytes + size <= self._max_inflight_bytes

    async def _handle(self, task: FileTask) -> None:
        try:
            try:
                result = await self._process(task.path, task.hotwords, task.options)
            except ASRError as exc:
                log.warning(
                    "job %s file %d (%s) failed: [%s] %s", task.job_id, task.index, task.name,
                    exc.code, exc,
                )  # fmt: skip
                await asyncio.to_thread(
                    self.store.fail_file, task.job_id, task.index, exc.code, str(exc)
                )
            except asyncio.CancelledError:
                raise  # shutting down: the file stays 'running' and is re-queued on start-up
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the job
                log.exception("job %s file %d (%s) failed", task.job_id, task.index, task.name)
                await asyncio.to_thread(
                    self.store.fail_file,
                    task.job_id,
                    task.index,
                    "internal_error",
                    f"Processing failed: {exc}",
                )
            else:
                stored = await asyncio.to_thread(self.store.finish_file, task.job_id, task.index, result)
                if not stored and self.store.owner is not None:
                    log.warning("job %s file %d: the claim was lost (its lease ran out) before the result "
                                "was stored; the process that holds it now stores its own", task.job_id, task.index)
            self._signal_change()
        finally:
            self._slots.release()
            self._inflight_bytes -= task.size
            self._room.set()


class LeaseHeartbeat:
    """A thread that renews this owner's leases every quarter lease and re-queues the files of
    owners whose leases ran out (dead processes), waking the worker when it did.

    A thread, not a task on the event loop: a loop that is busy for a while (a large result being
    rendered, a slow synchronous call) must not let the lease run out while the process lives."""

    def __init__(self, store: JobStore, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self.store = store
        self._loop = loop
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asr-job-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        interval = max(0.05, self.store.lease_s / 4)
        while not self._stop.wait(interval):
            try:
                self.store.renew_leases()
                requeued = self.store.requeue_expired()
            except sqlite3.Error as exc:  # the database busy past its timeout: try again next round
                log.warning("could not renew the job leases: %s", exc)
                continue
            if requeued:
                log.warning("re-queued %d job file(s) whose owner's lease ran out (a replica died)", requeued)
                with contextlib.suppress(RuntimeError):  # the loop has closed: stopping anyway
                    self._loop.call_soon_threadsafe(self._wake)
