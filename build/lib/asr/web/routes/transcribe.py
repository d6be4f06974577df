"""POST /api/transcribe: one file in, one result out."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from asr.service.core import Service, long_request, render_result
from asr.web.deps import get_service, read_upload

router = APIRouter(prefix="/api", tags=["transcribe"])

_MEDIA = {"txt": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}


@router.post("/transcribe", summary="Transcribe one audio file", response_model=None)
async def transcribe(
    service: Annotated[Service, Depends(get_service)],
    file: Annotated[UploadFile, File(description="Audio file (wav, mp3, m4a, ogg, flac, ...)")],
    hotwords: Annotated[
        str, Form(description="Hotwords, one per line or separated by spaces; plain words, no weights")
    ] = "",
    timestamps: Annotated[bool, Form(description="Include per-character timings")] = True,
    format: Annotated[Literal["json", "txt", "srt", "vtt"], Form(description="Response format")] = "json",
    vad: Annotated[
        Literal["auto", "on", "off"],
        Form(description="VAD segmentation; auto: on for audio longer than longform.auto_vad_s"),
    ] = "auto",
    punc: Annotated[
        Literal["auto", "on", "off"], Form(description="Punctuation (auto/on: when a model is available)")
    ] = "auto",
    speakers: Annotated[bool, Form(description="Label each sentence with a speaker (CAM++)")] = False,
    num_speakers: Annotated[
        int | None, Form(ge=1, le=32, description="Number of speakers; empty estimates it")
    ] = None,
) -> JSONResponse | PlainTextResponse:
    """Decode the file, wait for its turn in the shared batch scheduler and return the result.

    JSON results hold `text`, `duration_s`, `processing_s`, `rtf`, `vad`, `punctuated`,
    `sentences` (`start_ms`/`end_ms` on the file's timeline, `speaker` when on), `segments` (the
    same in seconds) and, with timestamps, `tokens` (each with `start`/`end` in seconds).
    """
    words = service.parse_hotwords(hotwords)
    data = await read_upload(service, file)
    result = await service.transcribe_bytes(
        data, words, timestamps=timestamps or format in ("srt", "vtt"),
        long=long_request(vad, punc, speakers, num_speakers),
    )
    result["filename"] = file.filename
    if format == "json":
        # The result is plain JSON data (str, int, float, lists, dicts): rendered by json.dumps
        # directly, FastAPI's encoder walk over every token cost a third of the server's CPU.
        return JSONResponse(result)
    return PlainTextResponse(render_result(result, format), media_type=_MEDIA[format] + "; charset=utf-8")
