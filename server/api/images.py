"""`POST /v1/images/generations`: parse the body, let `ImageService` make the images, answer with JSON.

Every answer, error answers included, carries a `Server-Timing` header (`server.api.timing`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from pipelines.errors import ModelUnavailable
from server.accounts.credentials import Principal
from server.api.body import read_limited
from server.api.deps import Authenticated, ImageRequestId, with_cancellation
from server.api.errors import REQUEST_ID_HEADER
from server.api.protocol import ImageGenerationBody, parse_body, to_generation_request
from server.api.streaming import stream_images
from server.api.timing import TimedRoute, record_stages
from server.service import Answer, Delivery

router = APIRouter(route_class=TimedRoute)


async def generation_body(request: Request) -> ImageGenerationBody:
    """The body, parsed by hand: our 400s naming the parameter, never FastAPI's 422. One over
    `max_json_bytes` is refused with a 413 while it is read (`server.api.body`), before any of it is parsed."""
    return parse_body(await read_limited(request, request.app.state.settings.max_json_bytes, "body"))


GenerationBody = Annotated[ImageGenerationBody, Depends(generation_body)]

# The body is not a FastAPI body parameter, so its schema is given to OpenAPI here.
_REQUEST_BODY = {"requestBody": {
    "required": True, "content": {"application/json": {"schema": ImageGenerationBody.model_json_schema()}},
}}


# Dependencies run in this order: the request id (so that even a 401 carries it), the key, the body.
@router.post("/v1/images/generations", openapi_extra=_REQUEST_BODY)
async def generate_images(
    request: Request, request_id: ImageRequestId, principal: Authenticated, body: GenerationBody
) -> Any:
    if body.stream:
        generation, spec, delivery = _request(request, body, request_id)
        return await stream_images(request, generation, spec, delivery, principal, request_id)
    answer = await _generate(request, body, principal, request_id)
    # A response with several base64 images is megabytes of JSON: render it off the event loop.
    rendered = await asyncio.to_thread(render_json, answer.body)
    record_stages(request, answer.model, answer.stages)
    return Response(rendered, media_type="application/json", headers={REQUEST_ID_HEADER: request_id})


@with_cancellation
async def _generate(
    request: Request, body: ImageGenerationBody, principal: Principal, request_id: str
) -> Answer:
    """The cancellable part. Rendering the answer is not: by then the images are made and accounted for."""
    # Image links use IMAGESERVE_PUBLIC_URL, else the address this client reached us at: a server
    # listening on 0.0.0.0 (e.g. in Docker) must not hand out links to 127.0.0.1.
    generation, spec, delivery = _request(request, body, request_id)
    try:
        return await request.app.state.service.generate(generation, spec, delivery, principal)
    except ModelUnavailable as exc:
        if body.model is not None:
            raise
        raise default_model_unavailable(exc, request.app.state) from None


def default_model_unavailable(exc: ModelUnavailable, state: Any) -> ModelUnavailable:
    """The request named no model and the default one cannot run: say so, and what can."""
    ready = state.service.ready_models()
    return ModelUnavailable(f"{exc.message} The request named no model, so the default one "
                            f"('{state.settings.default_model}', IMAGESERVE_DEFAULT_MODEL) was used; name a model "
                            f"or change the default. Ready now: {', '.join(ready) or 'none'}.")


def _request(request: Request, body: ImageGenerationBody, request_id: str) -> tuple[Any, Any, Delivery]:
    state = request.app.state
    generation, spec = to_generation_request(body, state.registry, state.settings.default_model, request_id)
    delivery = Delivery(output_format=body.output_format, compression=body.output_compression, b64=body.wants_b64,
                        link_base=state.settings.public_url or str(request.base_url))
    return generation, spec, delivery


def render_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
