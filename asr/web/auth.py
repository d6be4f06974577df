"""Optional bearer-token protection (``server.api_token``) for the API and the UI.

API clients send ``Authorization: Bearer <token>`` (the OpenAI client does this with its
``api_key``). Browsers open ``/?token=<token>`` once: they get a signed session cookie (never the
token itself) and the page reloads without the token in the address bar; the page's own requests
(Gradio and batch_opt.js) then carry the cookie. /healthz stays open for load balancers.
Query tokens are redacted from the access log (`RedactTokens`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import time

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from asr.web.errors import error_body

COOKIE = "asr_session"
OPEN_PATHS = frozenset({"/healthz"})
# A cookie issued a little in the future (clock steps) is still accepted.
_CLOCK_SLACK_S = 60


class TokenAuth:
    """Refuse every HTTP request but /healthz, and every WebSocket (the live endpoint), without
    the token or a valid session cookie.

    A plain ASGI middleware (see `asr.web.app.RequestMetrics` for why not
    ``@app.middleware("http")``); it reads only the request line, headers and cookies. Refusals
    are 401: an HTML page saying how to open the UI for browsers, the JSON error shape otherwise.
    """

    def __init__(self, app: ASGIApp, token: str, session_s: float) -> None:
        self.app = app
        self.token = token.encode()
        self.session_s = session_s
        # Sessions are signed with a key derived from the token: a stolen cookie does not reveal
        # the token, expires, and changing the token ends every session.
        self._key = hmac.new(self.token, b"asr session cookie v1", hashlib.sha256).digest()

    def _matches(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(), self.token)

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def new_session(self, now: float | None = None) -> str:
        """A cookie value: issue time, a random id and their signature."""
        payload = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._sign(payload)}"

    def valid_session(self, value: str | None, now: float | None = None) -> bool:
        if not value or value.count(".") != 2:
            return False
        issued, nonce, signature = value.split(".")
        if not secrets.compare_digest(signature.encode(), self._sign(f"{issued}.{nonce}").encode()):
            return False
        try:
            age = (now if now is not None else time.time()) - int(issued)
        except ValueError:
            return False
        return -_CLOCK_SLACK_S <= age <= self.session_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.url.path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if self._matches(request.query_params.get("token")):
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = (
                request.url.replace_query_params(**dict(query))
                if query
                else request.url.remove_query_params("token")
            )
            redirect = RedirectResponse(str(target), status_code=303)
            redirect.set_cookie(
                COOKIE, self.new_session(), max_age=int(self.session_s), httponly=True, samesite="strict"
            )
            await redirect(scope, receive, send)
            return
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        if self._matches(bearer) or self.valid_session(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        await _refusal(request)(scope, receive, send)


    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The live WebSocket takes the token the way HTTP does: `Authorization: Bearer`, the
        session cookie (the UI's page), or `?token=` (browsers cannot set headers on a
        WebSocket, and FunASR's clients only take a URL). A refusal is HTTP 401 with the JSON
        error before the handshake where the server supports it (uvicorn does), else the
        connection is accepted and closed with 1008."""
        conn = HTTPConnection(scope)
        header = conn.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        if (
            self._matches(bearer)
            or self._matches(conn.query_params.get("token"))
            or self.valid_session(conn.cookies.get(COOKIE))
        ):
            await self.app(scope, receive, send)
            return
        message = (
            "This service needs a token: send 'Authorization: Bearer <token>', or add ?token=<token> "
            "to the WebSocket URL."
        )
        if "websocket.http.response" in scope.get("extensions", {}):
            body = json.dumps(error_body("unauthorized", message)).encode()
            await send({
                "type": "websocket.http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode())],
            })  # fmt: skip
            await send({"type": "websocket.http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized: a token is needed"})


def _refusal(request: Request) -> Response:
    headers = {"WWW-Authenticate": "Bearer"}
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(_LOGIN_PAGE, status_code=401, headers=headers)
    return JSONResponse(
        error_body(
            "unauthorized",
            "This service needs a token: send 'Authorization: Bearer <token>' (browsers: open "
            "/?token=<token> once).",
        ),
        status_code=401,
        headers=headers,
    )


_LOGIN_PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>需要访问令牌 Token required</title></head>
<body style="font-family: sans-serif; max-width: 42em; margin: 3em auto; line-height: 1.6">
<h1>需要访问令牌 · A token is required</h1>
<p>此服务设置了访问令牌（<code>server.api_token</code>）。请在浏览器中打开一次
<code>/?token=你的令牌</code>，例如 <code>http://127.0.0.1:7860/?token=…</code>；之后浏览器会记住会话，
地址栏中不会保留令牌。</p>
<p>This service is protected by a token (<code>server.api_token</code>). Open
<code>/?token=YOUR_TOKEN</code> once in this browser; it then keeps a session cookie and the token
leaves the address bar.</p>
<p>API 客户端 API clients: <code>Authorization: Bearer YOUR_TOKEN</code>.</p>
</body></html>
"""


_QUERY_TOKEN = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)


class RedactTokens(logging.Filter):
    """Replace ``token=<value>`` in query strings of log records (uvicorn's access log) with
    ``token=[redacted]``: a token in a log is a token for whoever reads the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "token=" in record.msg.lower():
            record.msg = _redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def _redact(text: str) -> str:
    return _QUERY_TOKEN.sub(r"\1[redacted]", text)


def redact_access_log() -> None:
    """Install RedactTokens on uvicorn's access logger and on its error logger, which logs
    WebSocket connections with their query (once; uvicorn's logging set-up keeps them)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


__all__ = ["COOKIE", "RedactTokens", "TokenAuth", "redact_access_log"]
