"""`GET /v1/images/files/{name}`: a stored image, for whoever holds its signed link (no API key needed).

The file store answers with the file; the S3 store in proxy mode streams the object from the store. The
check and the store's calls run off the event loop.
"""

from __future__ import annotations

import asyncio
from email.utils import formatdate

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response, StreamingResponse

from server.media.stored import StoredImage

router = APIRouter()

MAX_AGE_SECONDS = 300


def cache_headers(stored: StoredImage, now: float) -> dict[str, str]:
    """`Cache-Control` that never outlives the link, and the time the image was stored as `Last-Modified`."""
    left = MAX_AGE_SECONDS if stored.expires is None else max(0, min(MAX_AGE_SECONDS, int(stored.expires - now)))
    headers = {"Cache-Control": f"private, max-age={left}"}
    if stored.modified is not None:
        headers["Last-Modified"] = formatdate(stored.modified, usegmt=True)
    return headers


@router.get("/v1/images/files/{name}")
async def image_file(name: str, request: Request, expires: str | None = None, sig: str | None = None) -> Response:
    store = request.app.state.store
    stored = await asyncio.to_thread(store.open, name, expires, sig)
    headers = cache_headers(stored, store.clock())
    if stored.path is not None:
        return FileResponse(stored.path, media_type=stored.media_type, headers=headers)
    if stored.size is not None:
        headers["Content-Length"] = str(stored.size)
    return StreamingResponse(stored.chunks or iter(()), media_type=stored.media_type, headers=headers)
