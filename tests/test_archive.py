"""Zip downloads (asr.service.archive) against a real job store: limits before any work, the
same archive whether written to a file or streamed, and a writer that stops with its reader."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest

from asr.errors import ArchiveRequestError, JobNotFoundError, LimitError
from asr.pipeline.formats import render
from asr.pipeline.result import Applied, Result, Segment, Sentence, Token
from asr.service import archive
from asr.service.archive import plan_archive, stream_archive, write_archive
from asr.service.jobs import JobStore
from asr.settings import LimitSettings


def _result(seconds: int, seed: int) -> dict:
    """A stored result as the service keeps it: one character per 100 ms, a sentence per second."""
    chars = [chr(0x4E00 + (seed * 131 + i * 7) % 2000) for i in range(seconds * 10)]
    tokens = tuple(Token(c, i * 100, i * 100 + 80) for i, c in enumerate(chars))
    sentences = tuple(Sentence("".join(chars[k : k + 10]) + "。", k * 100, k * 100 + 980)
                      for k in range(0, len(chars), 10))
    result = Result(
        text="".join(s.text for s in sentences), duration_ms=seconds * 1000, sentences=sentences,
        tokens=tokens, segments=(Segment(0, seconds * 1000),), speakers=(),
        applied=Applied(vad=False, punctuation=True, speakers=False, timestamps=True), processing_ms=100,
    )
    return json.loads(result.to_json())


def _job(store: JobStore, names: list[str], *, fail: set[int] = frozenset(), seconds: int = 5) -> str:  # type: ignore[assignment]
    job_id = store.create_job([(n, b"x") for n in names], [])
    for i in range(len(names)):
        store.claim_next()
        if i in fail:
            store.fail_file(job_id, i, "corrupt_audio", "The audio data could not be decoded.")
        else:
            store.finish_file(job_id, i, _result(seconds, i))
    return job_id


@pytest.fixture()
def store(tmp_path: Path) -> JobStore:
    s = JobStore(tmp_path / "jobs.sqlite3", tmp_path)
    yield s
    s.close()


def test_plan_refuses_duplicates_unknown_ids_and_oversized_downloads(store: JobStore) -> None:
    a = _job(store, ["a.wav", "b.wav", "c.wav"])
    b = _job(store, ["d.wav", "e.wav"], fail={1})
    limits = LimitSettings(max_zip_files=5, max_files_per_job=5)
    plan = plan_archive(store, [a, b], limits)
    assert plan.files == 5 and plan.job_ids == (a, b)
    stored = sum(len(json.dumps(_result(5, i), ensure_ascii=False).encode()) for i in (0, 1, 2, 0))
    assert plan.result_bytes == stored  # the failed file has no result

    with pytest.raises(ArchiveRequestError, match="more than once"):
        plan_archive(store, [a, b, a], limits)
    with pytest.raises(ArchiveRequestError):
        plan_archive(store, [], limits)
    with pytest.raises(JobNotFoundError):
        plan_archive(store, [a, "no-such-job"], limits)
    c = _job(store, ["f.wav"])
    with pytest.raises(LimitError, match="limits.max_zip_files"):
        plan_archive(store, [a, b, c], limits)
    # More ids than files allowed is refused before any lookup.
    with pytest.raises(LimitError, match="limits.max_zip_files"):
        plan_archive(store, [f"id{i}" for i in range(6)], limits)
    with pytest.raises(LimitError, match="limits.max_zip_mb"):
        plan_archive(store, [a, b], LimitSettings(max_zip_mb=(stored - 1) / 1048576))
    assert plan_archive(store, [a, b], LimitSettings(max_zip_mb=stored / 1048576)).files == 5
    # A job at the file limit always fits one download.
    with pytest.raises(ValueError, match="max_zip_files"):
        LimitSettings(max_zip_files=5, max_files_per_job=6)


def test_streamed_zip_equals_the_written_one_and_numbers_files_across_jobs(store: JobStore) -> None:
    a = _job(store, ["会议 记录.mp3", "../../etc/passwd"], seconds=30)
    b = _job(store, ["x.wav", "bad.wav"], fail={1}, seconds=30)
    plan = plan_archive(store, [a, b], LimitSettings())
    on_disk = io.BytesIO()
    write_archive(store, plan, on_disk)

    async def collect() -> list[bytes]:
        return [chunk async for chunk in stream_archive(store, plan)]

    chunks = asyncio.run(collect())
    streamed = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    written = zipfile.ZipFile(on_disk)
    assert streamed.testzip() is None
    assert streamed.namelist() == written.namelist() == [
        "001_会议_记录.txt", "001_会议_记录.srt", "001_会议_记录.json",
        "002_passwd.txt", "002_passwd.srt", "002_passwd.json",
        "003_x.txt", "003_x.srt", "003_x.json",
        "004_bad.error.txt",
    ]  # fmt: skip
    for name in written.namelist():
        assert streamed.read(name) == written.read(name)
    assert streamed.read("003_x.srt").decode() == render(Result.from_dict(_result(30, 0)), "srt")
    assert streamed.read("004_bad.error.txt").decode().startswith("corrupt_audio: ")


def test_the_writer_waits_for_a_slow_reader_and_stops_when_it_leaves(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archive, "CHUNK_BYTES", 4096)  # many chunks from a small job
    job = _job(store, [f"f{i}.wav" for i in range(40)], seconds=60)
    plan = plan_archive(store, [job], LimitSettings())
    rendered: list[int] = []
    real_render = archive.render

    def counting_render(result: Result, fmt: str) -> str:
        rendered.append(1)
        return real_render(result, fmt)

    monkeypatch.setattr(archive, "render", counting_render)

    async def read_two_then_leave() -> int:
        stream = stream_archive(store, plan)
        await stream.__anext__()
        await stream.__anext__()
        await asyncio.sleep(0.3)  # the writer fills the queue, then waits
        paused_at = len(rendered)
        await stream.aclose()
        return paused_at

    paused_at = asyncio.run(read_two_then_leave())
    assert paused_at < 40 * 3  # bounded read-ahead: it did not render the whole job
    deadline = time.monotonic() + 5
    while any(t.name == "asr-zip" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "asr-zip" for t in threading.enumerate())  # the writer ended
    assert len(rendered) <= paused_at + 3  # at most the file in hand was finished after leaving
