"""`GET /playground`: a page to try the models from a browser; `GET /` sends you there.

Plain HTML, CSS and JavaScript from `server/static/playground/` (package data), no CDN and no build step. The
page calls the API itself (`/v1/models`, `/v1/images/generations`, `/v1/images/edits` with a mask painted on a
canvas) with the key typed into it, kept in the
tab's sessionStorage only; the page and its assets need no key. Its Content-Security-Policy lets it reach
this server and nothing else.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from server.errors import NotFound

router = APIRouter(include_in_schema=False)

_STATIC = resources.files("server").joinpath("static", "playground")
_ASSETS = {  # the only files served: name -> media type
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
                                "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                                "frame-ancestors 'none'; form-action 'none'"),
}


def _read(name: str) -> bytes:
    return _STATIC.joinpath(name).read_bytes()


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/playground", status_code=307)


@router.get("/playground")
def playground() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/playground/{asset}")
def playground_asset(asset: str) -> Response:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        raise NotFound(f"The playground has no file '{asset}'.")
    return Response(_read(asset), media_type=media_type, headers=_HEADERS)
