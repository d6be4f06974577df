"""POST /v1/audio/transcriptions, compatible with OpenAI's API so its official client works unchanged.

`prompt` carries the hotwords (one per line or space separated): SeACo-Paraformer biases towards
listed words rather than continuing a text prompt. `model`, `language` and `temperature` are
accepted and ignored: the service runs one Chinese model. Extensions: `vad`, `punc`, `speakers`,
`num_speakers`, `itn`, `hotword_sets`, `hotword_diff`, `channels`, `channel_names` (as in
/api/transcribe; the OpenAI client sends them as `extra_body`); verbose_json segments are the
sentences on the file's timeline, with `speaker` when speakers are on or channels are split, and
verbose_json carries the result's `hotword_hits`, `corrections` and `hotword_diff` when there are any.

`stream=true` answers with server-sent events as OpenAI's API does: a `transcript.text.delta` per
segment as it finishes (in order; its text punctuated as that segment alone would be, with its
`start` and `end` in seconds as an extension), then `transcript.text.done` with the whole text,
the same text as without `stream`. An error after the first event arrives as an `error` event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from asr.errors import ASRError
from asr.pipeline.formats import openai_response
from asr.pipeline.options import MAX_SPEAKERS, Options
from asr.pipeline.result import Result
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
    stream: Annotated[bool, Form(description="Server-sent events: a text delta per finished segment")] = False,
) -> Response:
    words = "word" in (timestamp_granularities or [])
    options = service.options(
        hotwords=prompt, vad=vad, punc=punc, speakers=speakers, num_speakers=num_speakers, itn=itn,
        hotword_sets=hotword_sets, hotword_diff=hotword_diff, channels=channels, channel_names=channel_names,
    )
    if stream:
        return await _stream(service, upload_source(service, file), options)
    result = await service.transcribe(upload_source(service, file), options)
    body = openai_response(result, response_format, words=words)
    if isinstance(body, str):
        return PlainTextResponse(body)
    return JSONResponse(body)


async def _stream(service: Service, source: Any, options: Options) -> StreamingResponse:
    """Segments as server-sent events while the file is recognised."""
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_segment(segment: Result) -> None:
        await events.put(("delta", segment))

    async def run() -> None:
        try:
            events.put_nowait(("done", await service.transcribe(source, options, on_segment=on_segment)))
        except ASRError as exc:
            events.put_nowait(("error", exc))

    task = asyncio.create_task(run())
    first = await events.get()
    if first[0] == "error":
        raise first[1]  # nothing was sent yet: the error gets its HTTP status

    async def body() -> AsyncIterator[str]:
        item = first
        try:
            while True:
                kind, value = item
                if kind == "delta":
                    yield _event({"type": "transcript.text.delta", "delta": value.text,
                                  "start": value.segments[0].start_ms / 1000, "end": value.segments[0].end_ms / 1000})
                elif kind == "done":
                    yield _event({"type": "transcript.text.done", "text": value.text})
                    return
                else:
                    yield _event({"type": "error", "error": {"code": value.code, "message": str(value)}})
                    return
                item = await events.get()
        finally:
            task.cancel()  # the client went away: its queued segments are skipped

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/models", summary="Models served (OpenAI-compatible listing)")
async def list_models(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "seaco-paraformer", "object": "model", "owned_by": "local"}]}
