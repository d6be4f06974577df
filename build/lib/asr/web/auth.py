"""Optional bearer-token protection (``server.api_token``) for the API and the UI.

API clients send ``Authorization: Bearer <token>`` (the OpenAI client does this with its
``api_key``). Browsers open ``/?token=<token>`` once: the token moves into an HttpOnly cookie and
the page reloads without it in the address bar; the page's own requests (Gradio and
batch_opt.js) then carry the cookie. /healthz stays open for load balancers.
"""

from __future__ import annotations

import secrets

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from asr.web.errors import error_body

COOKIE = "asr_token"
OPEN_PATHS = frozenset({"/healthz"})


class TokenAuth:
    """Refuse every HTTP request but /healthz without the token (401 with the JSON error shape).

    A plain ASGI middleware (see `asr.web.app.RequestMetrics` for why not
    ``@app.middleware("http")``); it reads only the request line, headers and cookies.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _matches(self, value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            redirect.set_cookie(COOKIE, self.token.decode(), httponly=True, samesite="strict")
            await redirect(scope, receive, send)
            return
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        if self._matches(bearer) or self._matches(request.cookies.get(COOKIE)):
            await self.app(scope, receive, send)
            return
        refusal = JSONResponse(
            error_body("unauthorized", "This service needs a token: send 'Authorization: Bearer <token>'."),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await refusal(scope, receive, send)
