"""POST /v1/audio/transcriptions, compatible with OpenAI's API so its official client works unchanged.

`prompt` carries the hotwords (one per line or space separated): SeACo-Paraformer biases towards
listed words rather than continuing a text prompt. `model`, `language` and `temperature` are
accepted and ignored: the service runs one Chinese model. Extensions: `vad`, `punc`, `speakers`,
`num_speakers`, `itn`, `hotword_sets`, `hotword_diff`, `channels`, `channel_names` (as in
/api/transcribe; the OpenAI client sends them as `extra_body`); verbose_json segments are the
sentences on the file's timeline, with `speaker` when speakers are on or channels are split, and
verbose_json carries the result's `hotword_hits`, `corrections` and `hotword_diff` when there are any.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from asr.pipeline.formats import openai_response
from asr.pipeline.options import MAX_SPEAKERS
from asr.service.core import Service
from asr.web.deps import get_service, upload_source

router = APIRouter(prefix="/v1", tags=["openai compatible"])

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Switch = Literal["auto", "on", "off"]
Channels = Literal["mix", "split"]


@router.post("/audio/transcriptions", summary="OpenAI-compatible transcription", response_model=None)
async def create_transcription(
    service: Annotated[Service, Depends(get_service)],
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form()] = "seaco-paraformer",
    prompt: Annotated[str, Form(description="Hotwords, one per line or space separated")] = "",
    response_format: Annotated[ResponseFormat, Form()] = "json",
    language: Annotated[str | None, Form()] = None,
    temperature: Annotated[float | None, Form()] = None,
    timestamp_granularities: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
    vad: Annotated[Switch, Form(description="Extension: VAD segmentation")] = "auto",
    punc: Annotated[Switch, Form(description="Extension: punctuation")] = "auto",
    speakers: Annotated[bool, Form(description="Extension: speaker labels on segments")] = False,
    num_speakers: Annotated[int | None, Form(ge=1, le=MAX_SPEAKERS)] = None,
    itn: Annotated[Switch, Form(description="Extension: numbers, dates, money as digits")] = "auto",
    hotword_sets: Annotated[str, Form(description="Extension: named hotword sets, comma separated")] = "",
    hotword_diff: Annotated[bool, Form(description="Extension: where the text differs without the hotwords")] = False,
    channels: Annotated[Channels, Form(description="Extension: mix, or split (each channel labelled)")] = "mix",
    channel_names: Annotated[str, Form(description="Extension: channel names, comma separated")] = "",
) -> Response:
    words = "word" in (timestamp_granularities or [])
    options = service.options(
        hotwords=prompt, vad=vad, punc=punc, speakers=speakers, num_speakers=num_speakers, itn=itn,
        hotword_sets=hotword_sets, hotword_diff=hotword_diff, channels=channels, channel_names=channel_names,
    )
    result = await service.transcribe(upload_source(service, file), options)
    body = openai_response(result, response_format, words=words)
    if isinstance(body, str):
        return PlainTextResponse(body)
    return JSONResponse(body)


@router.get("/models", summary="Models served (OpenAI-compatible listing)")
async def list_models(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "seaco-paraformer", "object": "model", "owned_by": "local"}]}
