"""What the routes share: the caller's key, a request id, and cancelling work whose client went away.

Routes take their services from `request.app.state` (set by `server.app.create_app`); these dependencies
do the same, so a router module needs nothing passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

from fastapi import Depends, Request

from server.accounts.credentials import Principal
from server.api.timing import record_auth
from server.errors import ClientClosedRequest

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


async def authenticate(request: Request) -> Principal:
    """The key in the `Authorization` header, checked (with the client's address, for the failure budget).
    How long that took, refusals included, is kept on `request.state` for the `Server-Timing` header."""
    client_ip = request.client.host if request.client else None
    started = time.perf_counter()
    try:
        return await request.app.state.authenticator.authenticate(request.headers.get("authorization"), client_ip)
    finally:
        record_auth(request, (time.perf_counter() - started) * 1000)


def image_request_id(request: Request) -> str:
    """A fresh id for an image request, kept on `request.state` so that error answers carry it too."""
    request_id = f"req_img_{secrets.token_hex(12)}"
    request.state.request_id = request_id
    return request_id


Authenticated = Annotated[Principal, Depends(authenticate)]
ImageRequestId = Annotated[str, Depends(image_request_id)]


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away. The body has been read, so the next message is a disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; if the client disconnects first, cancel it (dropping its queued jobs), wait until it has
    wound down, and raise `ClientClosedRequest` (499). Its body must have been read already."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is cancelled (shutdown): take the work with it
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        logger.info("%s: client disconnected; its work was cancelled", getattr(request.state, "request_id", "-"))
        raise ClientClosedRequest("The client closed the connection; its work was cancelled.")
    return task.result()


def with_cancellation(
    work: Callable[Concatenate[Request, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Request, P], Awaitable[T]]:
    """Decorate `async def work(request, ...)` to run under `run_unless_disconnected` (like vLLM's decorator
    of that name, but the work is cancelled and awaited, and the answer is a 499, not silence)."""

    @functools.wraps(work)
    async def wrapper(request: Request, *args: P.args, **kwargs: P.kwargs) -> T:
        return await run_unless_disconnected(request, work(request, *args, **kwargs))

    return wrapper
