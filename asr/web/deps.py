"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

import io
from typing import BinaryIO

from fastapi import Request, UploadFile

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
