"""The routes' shared dependencies: the key check, request ids, and cancelling work whose client left."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from server.api.deps import authenticate, image_request_id, run_unless_disconnected, with_cancellation
from server.api.errors import status_of
from server.errors import ClientClosedRequest


class FakeRequest:
    """What the dependencies use of a Starlette request: `receive`, `state`, headers, client, app.state."""

    def __init__(self, headers: dict[str, str] | None = None, client: Any = None, app_state: Any = None) -> None:
        self.gone = asyncio.Event()
        self.state = SimpleNamespace()
        self.headers = headers or {}
        self.client = client
        self.app = SimpleNamespace(state=app_state)
        self.receives = 0

    async def receive(self) -> dict[str, str]:
        self.receives += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_work_that_finishes_first_gives_its_result() -> None:
    request = FakeRequest()

    async def work() -> str:
        return "images"

    assert await run_unless_disconnected(request, work()) == "images"  # type: ignore[arg-type]


async def test_an_error_of_the_work_is_raised_as_it_is() -> None:
    async def work() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await run_unless_disconnected(FakeRequest(), work())  # type: ignore[arg-type]


async def test_a_disconnect_cancels_the_work_waits_for_it_and_answers_499() -> None:
    request = FakeRequest()
    request.state.request_id = "req_img_1"
    started, wound_down = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)  # clean-up that itself awaits: it must finish before the 499
            wound_down.set()

    async def client_leaves() -> None:
        await started.wait()
        request.gone.set()

    leaving = asyncio.create_task(client_leaves())
    with pytest.raises(ClientClosedRequest) as raised:
        await run_unless_disconnected(request, work())  # type: ignore[arg-type]
    await leaving
    assert wound_down.is_set()
    assert status_of(raised.value) == 499
    assert raised.value.__context__ is None  # nothing internal chained to the client's error


async def test_a_cancelled_handler_takes_its_work_with_it() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handler = asyncio.create_task(run_unless_disconnected(FakeRequest(), work()))  # type: ignore[arg-type]
    await started.wait()
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler
    await asyncio.sleep(0)
    assert cancelled.is_set()


async def test_with_cancellation_runs_the_decorated_work_with_its_arguments() -> None:
    @with_cancellation
    async def generate(request: Any, prompt: str, *, n: int) -> tuple[str, int]:
        """Make images."""
        return prompt, n

    request = FakeRequest()
    assert await generate(request, "a cube", n=2) == ("a cube", 2)
    assert request.receives == 1  # it listened for a disconnect while the work ran
    assert generate.__name__ == "generate" and generate.__doc__ == "Make images."


async def test_with_cancellation_answers_499_when_the_client_leaves() -> None:
    @with_cancellation
    async def generate(request: Any) -> None:
        request.gone.set()
        await asyncio.sleep(60)

    with pytest.raises(ClientClosedRequest):
        await generate(FakeRequest())


async def test_authenticate_passes_the_header_and_the_client_address() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def check(authorization: str | None, client_ip: str | None) -> str:
        seen.append((authorization, client_ip))
        return "principal"

    state = SimpleNamespace(authenticator=SimpleNamespace(authenticate=check))
    with_client = FakeRequest({"authorization": "Bearer k"}, SimpleNamespace(host="10.0.0.7"), state)
    assert await authenticate(with_client) == "principal"  # type: ignore[arg-type]
    assert await authenticate(FakeRequest(app_state=state)) == "principal"  # type: ignore[arg-type]
    assert seen == [("Bearer k", "10.0.0.7"), (None, None)]


def test_each_image_request_gets_a_new_id_kept_for_error_answers() -> None:
    first, second = FakeRequest(), FakeRequest()
    ids = image_request_id(first), image_request_id(second)  # type: ignore[arg-type]
    assert ids[0] != ids[1]
    assert all(i.startswith("req_img_") and len(i) == len("req_img_") + 24 for i in ids)
    assert first.state.request_id == ids[0]
