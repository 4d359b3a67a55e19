"""Reading a request body with a size limit: refused (413) while it arrives, never read whole first.

`read_limited(request, limit, param)` trusts nothing the client says: a `Content-Length` over the limit is
refused before a byte is read, and the bytes that do arrive (chunked bodies have no length) are counted as
they come, so at most `limit` bytes are ever held. Generic: JSON bodies pass `param="body"`, an upload its
field's name. What is left of a refused body is the HTTP server's to discard; the connection stays usable.
"""

from __future__ import annotations

from fastapi import Request
from starlette.requests import ClientDisconnect

from server.errors import ClientClosedRequest, PayloadTooLarge


def too_large(param: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request's {param} is too large: at most {limit} bytes are allowed.",
                           param=param, limit=limit)


def declared_length(request: Request) -> int | None:
    """The `Content-Length` the client announced, or None (absent, or not a number: then only counting tells)."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw.strip())
    except ValueError:
        return None


async def read_limited(request: Request, limit: int, param: str) -> bytes:
    """The whole body, at most `limit` bytes, or `PayloadTooLarge` naming `param` as soon as it is plainly more.

    The request's stream is consumed (`request.body()` cannot be called afterwards). A client that goes away
    mid-body gets `ClientClosedRequest`."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise too_large(param, limit)
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large(param, limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientClosedRequest("The client closed the connection while sending its request.") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
