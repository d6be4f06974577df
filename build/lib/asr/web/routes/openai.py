"""POST /v1/audio/transcriptions, compatible with OpenAI's API so its official client works unchanged.

`prompt` carries the hotwords (one per line or space separated): SeACo-Paraformer biases towards
listed words rather than continuing a text prompt. `model`, `language` and `temperature` are
accepted and ignored: the service runs one Chinese model. Extensions: `vad`, `punc`, `speakers`,
`num_speakers` (as in /api/transcribe); verbose_json segments are the sentences on the file's
timeline, with `speaker` when speakers are on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse

from asr.service.core import Service, long_request, render_result
from asr.web.deps import get_service, read_upload

router = APIRouter(prefix="/v1", tags=["openai compatible"])

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


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
    vad: Annotated[Literal["auto", "on", "off"], Form(description="Extension: VAD segmentation")] = "auto",
    punc: Annotated[Literal["auto", "on", "off"], Form(description="Extension: punctuation")] = "auto",
    speakers: Annotated[bool, Form(description="Extension: speaker labels on segments")] = False,
    num_speakers: Annotated[int | None, Form(ge=1, le=32)] = None,
) -> dict[str, Any] | JSONResponse | PlainTextResponse:
    words = service.parse_hotwords(prompt)
    data = await read_upload(service, file)
    want_words = "word" in (timestamp_granularities or [])
    result = await service.transcribe_bytes(
        data, words, timestamps=response_format != "json" or want_words,
        long=long_request(vad, punc, speakers, num_speakers),
    )
    if response_format == "json":
        return {"text": result["text"]}
    if response_format == "text":
        return PlainTextResponse(result["text"] + "\n")
    if response_format in ("srt", "vtt"):
        return PlainTextResponse(render_result(result, response_format))
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": "chinese",
        "duration": result["duration_s"],
        "text": result["text"],
        "segments": [
            {
                **seg,
                # Whisper-specific decoder statistics: neutral values, this model has none.
                "seek": 0,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
            for seg in result["segments"]
        ],
    }
    if want_words:
        body["words"] = [
            {"word": t["text"], "start": t["start"], "end": t["end"]} for t in result.get("tokens", [])
        ]
    return JSONResponse(body)  # plain JSON data: skips FastAPI's per-value encoder walk


@router.get("/models", summary="Models served (OpenAI-compatible listing)")
async def list_models(service: Annotated[Service, Depends(get_service)]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": "seaco-paraformer",
                "object": "model",
                "owned_by": "local",
                "root": service.settings.engine.model,
            }
        ],
    }
