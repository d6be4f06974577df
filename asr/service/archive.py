"""Zip downloads of batch-job results (txt, srt and json per finished file, a note per failed one).

An archive is checked against its limits before any of it is written (SQLite counts the files and
the stored result bytes), then written on a worker thread, one file's result at a time, into a
bounded queue the web server drains: the event loop never renders or compresses anything, memory
holds a few chunks whatever the archive's size, and a client that stops reading stops the writer.
(Building the zip in memory on the event loop let one URL naming a 200-file job 1,000 times hold
the service for a minute and 2.4 GB; see docs/limits-and-security.md.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import zipfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from asr.errors import ArchiveRequestError, JobNotFoundError, LimitError
from asr.pipeline.formats import render
from asr.service.core import safe_stem, stored_result
from asr.service.jobs import JobStore
from asr.settings import LimitSettings

# Bytes handed to the web server per chunk, and chunks waiting for a slow client: memory per
# download stays under ~2 MB.
CHUNK_BYTES = 256 * 1024
QUEUED_CHUNKS = 8
FORMATS = ("txt", "srt", "json")


class Writable(Protocol):
    """What the zip is written to: a file, or the stream's chunk sink."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class ArchivePlan:
    """A checked download: the jobs in order, how many files and stored result bytes they hold."""

    job_ids: tuple[str, ...]
    files: int
    result_bytes: int


def plan_archive(store: JobStore, job_ids: Sequence[str], limits: LimitSettings) -> ArchivePlan:
    """Check a download against the limits without reading any result.

    Raises ArchiveRequestError (no id, an id twice), JobNotFoundError, or LimitError naming
    `limits.max_zip_files` / `limits.max_zip_mb`. Blocking (SQLite): call it from a thread.
    """
    if not job_ids:
        raise ArchiveRequestError("Name at least one job id (job_ids=...).")
    if len(set(job_ids)) != len(job_ids):
        raise ArchiveRequestError("A job id is named more than once; name each job once.")
    # Every job has at least one file: more ids than the file limit cannot fit.
    if len(job_ids) > limits.max_zip_files:
        raise _too_many_files(len(job_ids), limits)
    files = 0
    result_bytes = 0
    for job_id in job_ids:
        totals = store.result_totals(job_id)
        if totals is None:
            raise JobNotFoundError(f"No job with id '{job_id[:64]}'.")
        files += totals[0]
        result_bytes += totals[1]
        if files > limits.max_zip_files:
            raise _too_many_files(files, limits)
        if result_bytes > limits.max_zip_mb * 1048576:
            raise LimitError(
                f"The results of these jobs are over {limits.max_zip_mb:g} MB (limits.max_zip_mb): "
                "download fewer jobs at a time."
            )
    return ArchivePlan(tuple(job_ids), files, result_bytes)


def _too_many_files(count: int, limits: LimitSettings) -> LimitError:
    return LimitError(
        f"At least {count} files asked for; one download holds at most {limits.max_zip_files} "
        "(limits.max_zip_files): download fewer jobs at a time."
    )


def write_archive(
    store: JobStore, plan: ArchivePlan, out: Writable, stop: threading.Event | None = None
) -> None:
    """Write the zip of ``plan`` to ``out`` (seekable or not). Blocking: run it on a thread.

    Files are numbered across the jobs in order (``001_name.txt``), so names never collide.
    ``stop`` ends the writing early (the client went away).
    """
    number = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for job_id in plan.job_ids:
            for f in store.iter_files(job_id):
                if stop is not None and stop.is_set():
                    return
                number += 1
                stem = f"{number:03d}_{safe_stem(f.name)}"
                if f.status == "done" and f.result is not None:
                    for ext in FORMATS:
                        zf.writestr(f"{stem}.{ext}", render(stored_result(f.result), ext))
                elif f.status == "failed":
                    zf.writestr(f"{stem}.error.txt", f"{f.error_code}: {f.error}\n")


class _Stopped(Exception):
    """The consumer is gone: unwinds the writer thread."""


class _ChunkSink:
    """A write-only file for zipfile (it has no tell(), so zipfile streams with data
    descriptors) that hands fixed-size chunks to ``put``."""

    def __init__(self, put: Callable[[bytes], None]) -> None:
        self._put = put
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        while len(self._buf) >= CHUNK_BYTES:
            self._put(bytes(self._buf[:CHUNK_BYTES]))
            del self._buf[:CHUNK_BYTES]
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._buf:
            self._put(bytes(self._buf))
            self._buf.clear()


async def stream_archive(store: JobStore, plan: ArchivePlan) -> AsyncIterator[bytes]:
    """The zip of ``plan`` as chunks, written by a thread of its own while the client reads.

    The writer waits whenever QUEUED_CHUNKS chunks are unread, so a slow client holds a few
    hundred kB, and stops as soon as the client goes away (the generator is closed).
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(QUEUED_CHUNKS)
    stop = threading.Event()

    def put(item: bytes | BaseException | None) -> None:
        # Waits while the queue is full (the client reads slowly), checking now and then
        # whether the reader left.
        if stop.is_set():
            raise _Stopped
        waiting = chunks.put(item)
        try:
            done = asyncio.run_coroutine_threadsafe(waiting, loop)
        except RuntimeError:  # the event loop is closed: nobody reads any more
            waiting.close()
            raise _Stopped from None
        while True:
            if stop.is_set():
                done.cancel()
                raise _Stopped
            try:
                done.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                continue

    def write() -> None:
        try:
            sink = _ChunkSink(put)
            write_archive(store, plan, sink, stop)
            sink.close()
            put(None)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            with contextlib.suppress(_Stopped):
                put(exc)

    writer = threading.Thread(target=write, name="asr-zip", daemon=True)
    writer.start()
    try:
        while True:
            item = await chunks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # a writer waiting for room sees it within half a second and ends


__all__ = ["ArchivePlan", "ArchiveRequestError", "plan_archive", "stream_archive", "write_archive"]
