"""`GET /v1/images/files/{name}`: a stored image, for whoever holds its signed link (no API key needed).

The file store answers with the file; the S3 store in proxy mode streams the object from the store. The
check and the store's calls run off the event loop.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

router = APIRouter()

CACHE_CONTROL = "private, max-age=300"


@router.get("/v1/images/files/{name}")
async def image_file(name: str, request: Request, expires: str | None = None, sig: str | None = None) -> Response:
    stored = await asyncio.to_thread(request.app.state.store.open, name, expires, sig)
    headers = {"Cache-Control": CACHE_CONTROL}
    if stored.path is not None:
        return FileResponse(stored.path, media_type=stored.media_type, headers=headers)
    if stored.size is not None:
        headers["Content-Length"] = str(stored.size)
    return StreamingResponse(stored.chunks or iter(()), media_type=stored.media_type, headers=headers)
