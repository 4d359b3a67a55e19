"""Things with a lifetime: started in order when the server starts, stopped in reverse when it stops.

`server.app` hands its lifespan a list of components; each owns what it runs between `start()` and
`stop()` (the image store its sweeper, a backend its device threads), so the lifespan knows none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Protocol


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def running(components: Sequence[Component]) -> AsyncIterator[None]:
    """Start each component in order; on exit stop, in reverse, every one that started (also when a later
    one failed to start, whose error then propagates)."""
    async with contextlib.AsyncExitStack() as stack:
        for component in components:
            await component.start()
            stack.push_async_callback(component.stop)
        yield


class BackgroundTask:
    """A coroutine that runs from `start()` until `stop()` cancels it (e.g. a periodic clean-up)."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._run = run
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ClosedOnStop:
    """A resource that needs nothing at start and a plain `close()` at stop (e.g. a thread pool)."""

    def __init__(self, close: Callable[[], object]) -> None:
        self._close = close

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._close()
