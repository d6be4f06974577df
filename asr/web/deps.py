"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

import io
from typing import BinaryIO

from fastapi import Request, UploadFile

from asr.errors import TokenRequiredError
from asr.service.core import Service


def get_service(request: Request) -> Service:
    """The app's service object (set by ``create_app``)."""
    return request.app.state.service  # type: ignore[no-any-return]


def upload_source(service: Service, upload: UploadFile) -> BinaryIO:
    """The uploaded file, checked against the upload limit, ready to be decoded as a stream.

    The web server has spooled it (to disk past 1 MB), so it is handed on as a file object, never
    read into memory whole.
    """
    handle = upload.file
    size = upload.size
    if size is None:
        handle.seek(0, io.SEEK_END)
        size = handle.tell()
    service.check_upload_size(size, upload.filename or "upload")
    handle.seek(0)
    return handle


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def require_admin(request: Request) -> None:
    """Routes that see or change everyone's data (the list of all jobs, hotword sets) need a token
    once other machines can reach the service: without one, anyone who reaches the port could
    list every job id (which are otherwise secrets) or rewrite a shared set. On the loopback
    default the machine's own users are trusted, as for every other route."""
    server = get_service(request).settings.server
    if server.api_token is None and server.host not in _LOOPBACK:
        raise TokenRequiredError(
            f"This service listens on {server.host} without a token: listing jobs and changing hotword "
            "sets need server.api_token (ASR_SERVER__API_TOKEN), or bind it to 127.0.0.1."
        )
