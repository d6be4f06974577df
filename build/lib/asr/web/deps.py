"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

from fastapi import Request, UploadFile

from asr.service.core import Service

_CHUNK = 1 << 20


def get_service(request: Request) -> Service:
    """The app's service object (set by ``create_app``)."""
    return request.app.state.service  # type: ignore[no-any-return]


async def read_upload(service: Service, upload: UploadFile) -> bytes:
    """Read an uploaded file, refusing it as soon as it passes the upload limit."""
    name = upload.filename or "upload"
    if upload.size is not None:
        # The web server spooled the upload (to disk past 1 MB) and knows its size: check it,
        # then read it with one allocation (joining chunks would hold the file twice).
        service.check_upload_size(upload.size, name)
        return await upload.read()
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(_CHUNK):
        size += len(chunk)
        service.check_upload_size(size, name)
        chunks.append(chunk)
    return b"".join(chunks)
