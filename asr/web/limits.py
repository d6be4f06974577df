"""Request body limits, enforced while the body streams in.

Starlette spools multipart uploads to temporary files before a route runs, so a check inside the
route would only see an oversized upload after all of it was received. This ASGI middleware sits
in front of everything (API and Gradio's upload route): a declared ``Content-Length`` over the
limit is answered 413 before a byte of the body is read, and a body without one (chunked) is cut
off at the first chunk that passes the limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr.pipeline.hotwords import MAX_HOTWORD_TEXT
from asr.settings import LimitSettings
from asr.web.errors import error_body

# One text field (hotwords, prompt, options) may hold this much, at every door: Starlette's
# multipart parser refuses a larger form field, asr.pipeline.hotwords refuses longer hotword text
# before parsing it, and bodies without a file (Gradio's JSON events) are cut off just above it.
FIELD_LIMIT = MAX_HOTWORD_TEXT
# Room for the form fields and multipart boundaries next to a file.
_FORM_SLACK = 1 << 20
# A JSON event's envelope (event ids, options, references to uploaded files) around its fields.
_EVENT_SLACK = 64 << 10
# Routes that take many files at once: the batch API and Gradio's upload route (the UI's batch
# tab uploads whole folders through it).
_MULTI_FILE_PATHS = ("/api/batch_async", "/gradio_api/upload")
# Routes that take one audio file.
_SINGLE_FILE_PATHS = ("/api/transcribe", "/v1/audio/transcriptions")


class _BodyTooLarge(Exception):
    """Raised into the app when the body passes its limit; the middleware answers 413."""


def body_limit_for(limits: LimitSettings) -> Callable[[str], tuple[int, str]]:
    """Path -> (byte limit, the sentence naming the setting).

    Only the upload routes take large bodies; every other body (Gradio's events, the token
    form, anything unknown) is held to one text field, so a 100 MB hotword string sent through
    Gradio's API is refused before it is parsed, as it is on the HTTP API's forms.
    """
    single = int(limits.max_upload_mb * 1048576) + _FORM_SLACK
    multi = int(limits.max_job_mb * 1048576) + _FORM_SLACK
    other = FIELD_LIMIT + _EVENT_SLACK

    def limit(path: str) -> tuple[int, str]:
        if path.startswith(_MULTI_FILE_PATHS):
            return (
                multi,
                f"The upload is over the limit of {limits.max_job_mb:g} MB per job (limits.max_job_mb).",
            )
        if path.startswith(_SINGLE_FILE_PATHS):
            return (
                single,
                f"The upload is over the limit of {limits.max_upload_mb:g} MB per file (limits.max_upload_mb).",
            )
        return (
            other,
            f"The request is over {other >> 10} kB: a text field (hotwords, options) holds at most "
            f"{FIELD_LIMIT >> 20} MB, and files go to the upload routes.",
        )

    return limit


class BodySizeLimit:
    """Answer 413 (JSON error shape) as soon as a request body is known to be over its limit."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, message = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, message)
            return

        received = 0
        over = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, over
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    over = True
                    raise _BodyTooLarge
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's reaction to the aborted read (a parse error) is replaced below
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _send_413(send, message)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, message: str) -> None:
    body = json.dumps(error_body("limit_exceeded", message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            # The rest of the body is not read: the connection cannot be reused.
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
