"""`GET /v1/images/files/{name}`: a stored image, for whoever holds its signed link (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

router = APIRouter()


@router.get("/v1/images/files/{name}")
async def image_file(name: str, request: Request, expires: str | None = None, sig: str | None = None) -> FileResponse:
    path, media_type = request.app.state.store.open(name, expires, sig)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})
