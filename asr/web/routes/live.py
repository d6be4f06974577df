"""The live WebSocket: FunASR runtime's protocol at /api/live, and at / for FunASR's own clients
(they connect to ws://host:port with no path). docs/live.md has the protocol and the limits.

The route only moves messages: `asr.service.live.LiveSession` does the work. Every way a
connection ends for a reason (bad input, a limit, a client that stopped reading) is a typed
error closed with its code (`asr.errors.ws_close_code`) and a reason; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from asr.errors import ASRError, LimitError, ws_close_code
from asr.service.core import Service
from asr.service.live import LiveFailure, LiveSession

log = logging.getLogger(__name__)

router = APIRouter(tags=["live"])

# A close frame's reason holds at most 123 bytes (RFC 6455 section 5.5).
_REASON_BYTES = 123


async def live(websocket: WebSocket) -> None:
    """FunASR's WebSocket protocol: a JSON configuration, binary 16-bit PCM, then
    {"is_speaking": false}; results as JSON text messages."""
    service: Service = websocket.app.state.service
    settings = service.settings.live
    # FunASR's clients ask for the "binary" subprotocol; answer it when offered.
    offered = websocket.scope.get("subprotocols") or []
    subprotocol = "binary" if "binary" in offered else None
    try:
        session = service.live.open()
    except ASRError as exc:
        await websocket.accept(subprotocol=subprotocol)
        await _close(websocket, exc)
        return
    await websocket.accept(subprotocol=subprotocol)
    sender = asyncio.create_task(_send_results(websocket, session, settings.send_timeout_s))
    receiver = asyncio.create_task(_receive(websocket, session, settings.idle_timeout_s, settings.max_message_kb))
    try:
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        error: ASRError | None = None
        for task in done:
            exc = task.exception()
            if isinstance(exc, ASRError):
                error = exc
            elif exc is not None and not isinstance(exc, WebSocketDisconnect):
                log.error("live connection failed: %r", exc)
                from asr.errors import engine_failure

                error = engine_failure(exc)
        if error is not None:
            service.live.refused(error.code)
            log.info("live connection closed: [%s] %s", error.code, error)
            await _close(websocket, error)
        elif receiver in done and receiver.exception() is None:
            await _close(websocket, None)  # quiet for live.idle_timeout_s after the last result
    finally:
        # No await here: a handler being cancelled (the server shutting down, a test client
        # leaving) would get a second CancelledError of its own making out of it, which its
        # caller cannot tell from a real failure. The two tasks end by themselves once cancelled.
        service.live.close(session)
        for task in (sender, receiver):
            task.cancel()
            task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[object]) -> None:
    """Collect an ended task's outcome (its error was handled above, or the connection is gone)."""
    if not task.cancelled():
        task.exception()


async def _receive(websocket: WebSocket, session: LiveSession, idle_s: float, max_kb: float) -> str:
    limit = int(max_kb * 1024)
    while True:
        try:
            message = await asyncio.wait_for(websocket.receive(), idle_s)
        except asyncio.TimeoutError:
            if session.phase == "ended":
                return "idle-after-end"  # the results were sent; a quiet close
            raise LimitError(
                f"Nothing was received for {idle_s:g} s (live.idle_timeout_s).", code="live_idle"
            ) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        data = message.get("bytes")
        text = message.get("text")
        size = len(data) if data is not None else len((text or "").encode())
        if size > limit:
            raise LimitError(
                f"A message of {size:,} bytes is over {max_kb:g} kB (live.max_message_kb).", code="message_too_big"
            )
        if data is not None:
            session.on_audio(data)
        elif text is not None:
            session.on_text(text)


async def _send_results(websocket: WebSocket, session: LiveSession, timeout_s: float) -> None:
    while True:
        item = await session.outbox.get()
        if isinstance(item, LiveFailure):
            raise item.error
        try:
            await asyncio.wait_for(websocket.send_text(json.dumps(item, ensure_ascii=False)), timeout_s)
        except asyncio.TimeoutError:
            raise LimitError(
                f"The client read no result for {timeout_s:g} s (live.send_timeout_s): it stopped reading.",
                code="live_not_reading",
            ) from None


async def _close(websocket: WebSocket, error: ASRError | None) -> None:
    if websocket.client_state != WebSocketState.CONNECTED or websocket.application_state != WebSocketState.CONNECTED:
        return
    code, reason = (1000, "") if error is None else (ws_close_code(error), _reason(f"{error.code}: {error}"))
    # A client that stopped reading cannot take the close frame either: do not wait for it.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(websocket.close(code=code, reason=reason), 2.0)


def _reason(text: str) -> str:
    data = text.encode()
    if len(data) <= _REASON_BYTES:
        return text
    return data[: _REASON_BYTES - 3].decode(errors="ignore") + "..."


router.add_api_websocket_route("/api/live", live, name="live")
# FunASR's clients connect to ws://host:port with no path; the UI is HTTP at the same path.
router.add_api_websocket_route("/", live, name="live_funasr")
