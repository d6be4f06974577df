"""POST /api/transcribe: one file in, one `Result` out."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import PlainTextResponse, Response

from asr.pipeline.formats import MEDIA_TYPES, render
from asr.pipeline.options import MAX_SPEAKERS
from asr.pipeline.result import Result
from asr.service.core import Service
from asr.web.deps import get_service, upload_source

router = APIRouter(prefix="/api", tags=["transcribe"])

Switch = Literal["auto", "on", "off"]
Channels = Literal["mix", "split"]


@router.post(
    "/transcribe",
    summary="Transcribe one audio file",
    response_model=None,
    responses={200: {"model": Result, "description": "The result (format=json); txt/srt/vtt as text"}},
)
async def transcribe(
    service: Annotated[Service, Depends(get_service)],
    file: Annotated[UploadFile, File(description="Audio file (wav, mp3, m4a, ogg, flac, ...)")],
    hotwords: Annotated[
        str, Form(description="Hotwords, one per line or separated by spaces; plain words, no weights")
    ] = "",
    timestamps: Annotated[bool, Form(description="Include per-character times (`tokens`)")] = True,
    format: Annotated[Literal["json", "txt", "srt", "vtt"], Form(description="Response format")] = "json",
    vad: Annotated[
        Switch, Form(description="VAD segmentation; auto: on for audio longer than longform.auto_vad_s")
    ] = "auto",
    punc: Annotated[
        Switch, Form(description="Punctuation; auto and on: whenever a punctuation model is available")
    ] = "auto",
    speakers: Annotated[bool, Form(description="Label each sentence with a speaker (CAM++)")] = False,
    num_speakers: Annotated[
        int | None, Form(ge=1, le=MAX_SPEAKERS, description="Number of speakers; empty estimates it")
    ] = None,
    itn: Annotated[
        Switch, Form(description="Numbers, dates, money as digits; auto: the pipeline.itn setting (on)")
    ] = "auto",
    hotword_sets: Annotated[
        str, Form(description="Named hotword sets (/api/hotword_sets), separated by commas or spaces")
    ] = "",
    hotword_diff: Annotated[
        bool, Form(description="Also recognise without the hotwords and return where the text differs")
    ] = False,
    channels: Annotated[
        Channels, Form(description="mix: channels averaged; split: each channel recognised and labelled")
    ] = "mix",
    channel_names: Annotated[
        str, Form(description="With channels=split: names for channels 1, 2, ... separated by commas (坐席,客户)")
    ] = "",
) -> Response:
    """Decode the file as a stream, recognise it through the shared batch scheduler and return
    the `Result` (docs/result.md) or its txt / srt / vtt rendering."""
    options = service.options(
        hotwords=hotwords, vad=vad, punc=punc, speakers=speakers, num_speakers=num_speakers, timestamps=timestamps,
        itn=itn, hotword_sets=hotword_sets, hotword_diff=hotword_diff, channels=channels, channel_names=channel_names,
    )
    result = await service.transcribe(upload_source(service, file), options)
    if format == "json":
        # Serialised by pydantic's Rust encoder: FastAPI's encoder walk over every token cost a
        # third of the server's CPU.
        return Response(result.to_json(), media_type=MEDIA_TYPES["json"])
    return PlainTextResponse(render(result, format), media_type=MEDIA_TYPES[format])
