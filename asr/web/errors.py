"""The one place where typed errors become HTTP responses: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from asr.errors import ASRError, http_status
from asr.web.messages import zh

log = logging.getLogger(__name__)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    # "type" mirrors OpenAI's error shape so its client shows our message unchanged;
    # "message_zh" is what the bilingual UI (batch_opt.js) shows before the English.
    body = {"code": code, "message": message, "type": "invalid_request_error"}
    chinese = zh(code)
    if chinese:
        body["message_zh"] = chinese
    return {"error": body}


def install_error_handlers(app: FastAPI) -> None:
    """Map ASRError subclasses, validation errors and HTTP errors to the JSON error shape."""

    @app.exception_handler(ASRError)
    async def _asr_error(request: Request, exc: ASRError) -> JSONResponse:
        status = http_status(exc)  # the one table, in asr.errors
        headers = {}
        retry_after = exc.retry_after_s
        if status == 503 and retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        if status >= 500 and status != 503:
            log.error("request %s failed: %s", request.url.path, exc)
        return JSONResponse(error_body(exc.code, str(exc)), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse(
            error_body("invalid_request", "; ".join(parts) or "Invalid request."), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # Form parsing problems (Starlette's multipart parser, FastAPI's body reader): say
            # what was wrong, and treat an oversized form field as the limit it is.
            cause = exc.__cause__
            reason = str(cause) if isinstance(cause, MultiPartException) else str(exc.detail)
            if "maximum size" in reason:
                return JSONResponse(
                    error_body(
                        "limit_exceeded",
                        f"A form field is too large ({reason}): hotwords and options must stay "
                        "under 1 MB, and within limits.max_hotwords and limits.max_hotword_chars.",
                    ),
                    status_code=413,
                )
            return JSONResponse(
                error_body("invalid_request", f"The request could not be read: {reason}"), status_code=400
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
