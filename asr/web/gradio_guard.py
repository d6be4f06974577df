"""Keep the mounted Gradio UI from fetching URLs a client names.

Gradio fetches http(s) URLs on the server in two places: an event input whose file reference
names one (`{"path": "https://...", "meta": {"_type": "gradio.FileData"}}` is downloaded into its
cache before the handler runs) and `GET /gradio_api/file=https://...` (streamed through the
server). Both are "SSRF-protected" by resolving the name (and asking a public DNS-over-HTTPS
service when that fails) and refusing private addresses, yet they still make the server look up
and connect to a host of the client's choosing. The service promises that no route fetches a
client-named URL, so this middleware refuses such requests before Gradio sees them: no name is
looked up and no connection is made. Files reach the UI through its upload route only.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr.web.errors import error_body
from asr.web.messages import bilingual

# A scheme of two or more letters and a slash: http://, https://, ftp://, file:/, ... (a Windows
# drive letter, "C:\\", is one letter and stays a path).
_URL = re.compile(r"^\s*[a-z][a-z0-9+.\-]+:/", re.IGNORECASE)
_PREFIX = "/gradio_api/"
# Gradio's routes that take a file reference or a URL in the path itself.
_PATH_ROUTES = ("/gradio_api/file=", "/file=")
# Multipart bodies of uploaded files: no file references in them, and large.
_UPLOAD_ROUTES = ("/gradio_api/upload",)
URL_REFUSED = bilingual(
    "url_refused",
    "URLs are not accepted as files: upload the file itself (this service never fetches a URL a client names).",
)


def names_url(value: Any) -> bool:
    """Whether JSON data holds a file reference (a dict's "path") that is a URL."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, str) and _URL.match(path):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class GradioUrlGuard:
    """Refuse (422) Gradio requests that name a URL as a file, and `/gradio_api/proxy=`
    (only used by apps built with gr.load, which this one is not).

    Event bodies are read whole before Gradio runs: BodySizeLimit, outside this middleware,
    holds them to about 1 MB.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path.startswith(_PREFIX) or path.startswith(_PATH_ROUTES)):
            await self.app(scope, receive, send)
            return
        for prefix in _PATH_ROUTES:
            if path.startswith(prefix) and _URL.match(path[len(prefix):]):
                await _refuse(send, 403)
                return
        if path.startswith("/gradio_api/proxy="):
            await _refuse(send, 403)
            return
        if scope["method"] != "POST" or path.startswith(_UPLOAD_ROUTES):
            await self.app(scope, receive, send)
            return

        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None  # not JSON: Gradio refuses it itself
        if names_url(data):
            await _refuse(send, 422)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int) -> None:
    body = json.dumps(error_body("url_refused", URL_REFUSED), ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
