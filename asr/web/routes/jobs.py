"""Durable batch jobs: POST /api/batch_async, GET /api/jobs (newest first), GET /api/jobs/{id},
GET /api/jobs/{id}/download."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import StreamingResponse

from asr.errors import InvalidRequestError
from asr.service.archive import plan_archive, stream_archive
from asr.service.core import Service, job_to_dict, summary_to_dict
from asr.web.deps import get_service, require_admin
from asr.web.messages import zh

router = APIRouter(prefix="/api", tags=["batch jobs"])


@router.post("/batch_async", status_code=202, summary="Queue many files as one job")
async def batch_async(
    service: Annotated[Service, Depends(get_service)],
    files: Annotated[list[UploadFile], File(description="Audio files")],
    hotwords: Annotated[
        str, Form(description="Hotwords for every file, one per line or space separated")
    ] = "",
    vad: Annotated[Literal["auto", "on", "off"], Form(description="VAD segmentation")] = "auto",
    punc: Annotated[Literal["auto", "on", "off"], Form(description="Punctuation")] = "auto",
    speakers: Annotated[bool, Form(description="Speaker labels per sentence")] = False,
    num_speakers: Annotated[int | None, Form(ge=1, le=32, description="Number of speakers")] = None,
    itn: Annotated[Literal["auto", "on", "off"], Form(description="Numbers, dates, money as digits")] = "auto",
    hotword_sets: Annotated[
        str, Form(description="Named hotword sets, comma separated; resolved now: later changes to a set "
                  "do not change this job")
    ] = "",
    hotword_diff: Annotated[bool, Form(description="Also recognise without the hotwords; report differences")] = False,
    channels: Annotated[Literal["mix", "split"], Form(description="mix, or split (each channel labelled)")] = "mix",
    channel_names: Annotated[str, Form(description="With channels=split: names, comma separated")] = "",
) -> dict[str, Any]:
    """Store the uploads and return a job id at once; the files are transcribed in the background.

    The job survives a restart of the service: uploads are on disk and state is in SQLite
    before this returns.
    """
    options = service.options(
        hotwords=hotwords, vad=vad, punc=punc, speakers=speakers, num_speakers=num_speakers, itn=itn,
        hotword_sets=hotword_sets, hotword_diff=hotword_diff, channels=channels, channel_names=channel_names,
    )
    # The web server has spooled each upload to a temporary file; the job store copies them to
    # the data directory block by block, so the job never sits in memory whole.
    uploads = [(f.filename or f"file{i + 1}", f.file) for i, f in enumerate(files)]
    job_id = await service.create_job(uploads, options)
    return {
        "job_id": job_id,
        "files": len(uploads),
        "status_url": f"/api/jobs/{job_id}",
        "download_url": f"/api/jobs/{job_id}/download",
    }


@router.get("/jobs", summary="Jobs, newest first, a page at a time", dependencies=[Depends(require_admin)])
async def list_jobs(
    service: Annotated[Service, Depends(get_service)],
    limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page")] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    """Every job the service keeps (until `server.job_retention_h` after it finished), with its
    counts; `next_cursor` fetches the next (older) page and is null on the last. Pages stay right
    while new jobs arrive (they come before the first page)."""
    rows = await asyncio.to_thread(service.jobs.list_jobs, limit + 1, _read_cursor(cursor))
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "jobs": [summary_to_dict(r) for r in rows],
        "next_cursor": _cursor(rows[-1].created_at, rows[-1].id) if more else None,
    }


def _cursor(created_at: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at, job_id]).encode()).decode().rstrip("=")


def _read_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created_at), str(job_id)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRequestError("The cursor is not one this service gave out (use next_cursor as it came).") from None


@router.get("/jobs/{job_id}", summary="Job status, per-file progress and results")
async def get_job(
    service: Annotated[Service, Depends(get_service)],
    job_id: str,
    results: Annotated[bool, Query(description="Include each finished file's full result")] = True,
) -> dict[str, Any]:
    job = job_to_dict(service.get_job(job_id), with_results=results)
    for item in job["files"]:
        if item["error"]:
            item["error"]["message_zh"] = zh(item["error"]["code"])  # the bilingual UI shows it first
    return job


@router.get(
    "/jobs/{job_id}/download",
    summary="All results of a job as a zip (txt, srt, json per file)",
    response_class=StreamingResponse,
)
async def download_job(service: Annotated[Service, Depends(get_service)], job_id: str) -> StreamingResponse:
    return await _zip_response(service, [job_id], f"asr-{job_id[:8]}.zip")


@router.get(
    "/jobs_zip",
    summary="Results of several jobs as one zip (files numbered across jobs)",
    response_class=StreamingResponse,
)
async def download_jobs(
    service: Annotated[Service, Depends(get_service)],
    job_ids: Annotated[
        list[str], Query(description="Job ids, each once, in the order their files are numbered")
    ],
) -> StreamingResponse:
    """At most `limits.max_zip_files` files and `limits.max_zip_mb` of stored results (413 beyond);
    a job id named twice is refused (400)."""
    return await _zip_response(service, job_ids, "asr-results.zip")


async def _zip_response(service: Service, job_ids: list[str], filename: str) -> StreamingResponse:
    # Checked before the answer starts (errors get their status); written while it streams.
    plan = await asyncio.to_thread(plan_archive, service.jobs, job_ids, service.settings.limits)
    return StreamingResponse(
        stream_archive(service.jobs, plan),
        media_type="application/zip",
        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}"},
    )
