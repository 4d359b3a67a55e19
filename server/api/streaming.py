"""`stream: true`: server-sent events in OpenAI's image streaming format, which the official SDKs parse as is.

`image_generation.partial_image` (`b64_json`, `partial_image_index`, `size`, `output_format`, `quality`,
`background`, `created_at`) for each preview a local model decodes along the way (`partial_images`, 0-3, per
image), then one `image_generation.completed` per image, carrying our `perf` block too. A GPT image model's own
stream is passed on (`server.backends.vendors.openai_images`); other hosted models send the completed events only.

Everything that can go wrong before the first event (bad input, quotas, a model that is unavailable, a full
queue) is still an ordinary error answer: the stream starts only once the first preview is ready or the work
is done. A failure after that is an `error` event (`{"type": "error", "error": {...}}`, which the SDKs raise as
an API error). A client that leaves cancels the remaining work, and is billed for nothing it did not get.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from pipelines.errors import ImageServeError
from pipelines.types import GenerationRequest
from server.accounts.credentials import Principal
from server.api.deps import run_unless_disconnected
from server.api.errors import REQUEST_ID_HEADER, body_of
from server.media.encoding import encode_pixels
from server.registry import ModelSpec
from server.service import Answer, Delivery

_DONE = object()


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class _Events:
    """Previews from the device thread, in order, then the end of the work."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def preview(self, image_index: int, partial_index: int, pixels: Any) -> None:  # on the device's thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (image_index, partial_index, pixels))

    def finished(self, _task: asyncio.Task[Answer]) -> None:
        self.queue.put_nowait(_DONE)


async def stream_images(request: Request, generation: GenerationRequest, spec: ModelSpec, delivery: Delivery,
                        principal: Principal, request_id: str, event_prefix: str = "image_generation"
                        ) -> StreamingResponse:
    events = _Events()
    generation = dataclasses.replace(generation, on_preview=events.preview)
    delivery = dataclasses.replace(delivery, b64=True)
    task = asyncio.create_task(request.app.state.service.generate(generation, spec, delivery, principal))
    task.add_done_callback(events.finished)
    try:  # until the first event: errors are ordinary answers, and a client leaving cancels the work
        first = await run_unless_disconnected(request, events.queue.get())
    except BaseException:
        task.cancel()
        raise
    if first is _DONE:
        task.result()  # raises the request's error as an ordinary answer
    output_format = delivery.output_format or "png"
    common = {"size": generation.size, "output_format": output_format, "quality": "auto", "background": "opaque"}

    async def body() -> AsyncIterator[bytes]:
        item = first
        try:
            while item is not _DONE:
                image_index, partial_index, pixels = item
                encoded = await asyncio.to_thread(encode_pixels, pixels, output_format, delivery.compression)
                yield sse(f"{event_prefix}.partial_image", {
                    "type": f"{event_prefix}.partial_image", "b64_json": base64.b64encode(encoded).decode(),
                    "partial_image_index": partial_index, "image_index": image_index,
                    "created_at": int(time.time()), **common})
                item = await events.queue.get()
            try:
                answer = task.result()
            except ImageServeError as exc:
                yield sse("error", {"type": "error", **body_of(exc)})
                return
            for index, entry in enumerate(answer.body["data"]):
                yield sse(f"{event_prefix}.completed", {
                    "type": f"{event_prefix}.completed", **entry, "image_index": index,
                    "created_at": answer.body["created"], **common,
                    "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                              "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}},
                    "perf": answer.body["perf"]})
        finally:
            if not task.done():  # the client left mid-stream: stop the work (its images are not billed)
                task.cancel()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", REQUEST_ID_HEADER: request_id})
