"""Optional bearer-token protection (``server.api_token``) for the API and the UI.

API clients send ``Authorization: Bearer <token>`` (the OpenAI client does this with its
``api_key``). Browsers open ``/?token=<token>`` once: the token moves into an HttpOnly cookie and
the page reloads without it in the address bar; the page's own requests (Gradio and
batch_opt.js) then carry the cookie. /healthz stays open for load balancers.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from asr.server.errors import error_body

COOKIE = "asr_token"
OPEN_PATHS = frozenset({"/healthz"})


def install_token_auth(app: FastAPI, token: str) -> None:
    """Refuse every request but /healthz without the token (401 with the JSON error shape)."""

    def matches(value: str | None) -> bool:
        return value is not None and secrets.compare_digest(value.encode(), token.encode())

    @app.middleware("http")
    async def _require_token(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        if matches(request.query_params.get("token")):
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = (
                request.url.replace_query_params(**dict(query))
                if query
                else request.url.remove_query_params("token")
            )
            redirect = RedirectResponse(str(target), status_code=303)
            redirect.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return redirect
        header = request.headers.get("authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
        if matches(bearer) or matches(request.cookies.get(COOKIE)):
            return await call_next(request)
        return JSONResponse(
            error_body("unauthorized", "This service needs a token: send 'Authorization: Bearer <token>'."),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
