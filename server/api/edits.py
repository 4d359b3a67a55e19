"""`POST /v1/images/edits` and `POST /v1/images/variations` (multipart/form-data, OpenAI's fields).

Edits: `image` (one file; `image[]` is accepted under that name), optional `mask` (a PNG of the same size whose
fully transparent pixels mark where to edit; without one, an image with transparent pixels is its own mask),
`prompt`, `model`, `n`, `size`, `response_format`, `output_format`, `output_compression`, `user`, and the
extensions `strength` (0-1, default 0.7 for edits), `seed`, `num_inference_steps`, `guidance_scale`,
`negative_prompt`, and `stream` with `partial_images` (`image_edit.*` events, `server.api.streaming`).
Variations: `image`, `model`, `n`, `size`, `response_format`, `user` (and the same extensions):
image-to-image of the input with an empty prompt at `IMAGESERVE_VARIATION_STRENGTH`.

Local models edit through diffusers' image-to-image and inpainting pipelines (`pipelines.editing`); the
default size is the input's, snapped to the model's grid and bounds. Hosted models that edit (`ModelSpec.edits`,
`variations`, `edit_needs_mask`: dall-e-2, flux-pro, ideogram-2) are forwarded to the vendor's own endpoints;
the others answer 400 naming `model` before anything is read or reserved. The rest (quotas, the
ledger, encoding, storage, `perf`) is the generations path (`ImageService.generate`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from PIL import Image
from starlette.datastructures import FormData, UploadFile

from pipelines.types import ImageEdit
from server.accounts.credentials import Principal
from server.api.deps import Authenticated, ImageRequestId, with_cancellation
from server.api.errors import REQUEST_ID_HEADER
from server.api.images import render_json
from server.api.protocol import ImageGenerationBody, parse_fields, to_generation_request
from server.api.streaming import stream_images
from server.api.timing import TimedRoute, record_stages
from server.api.uploads import Upload, decode_upload, read_form
from server.errors import InvalidRequest
from server.registry import CUSTOM_SIZE_MAX, CUSTOM_SIZE_MIN, CUSTOM_SIZE_MULTIPLE, ModelSpec
from server.service import Answer, Delivery

router = APIRouter(route_class=TimedRoute)

EDIT_STRENGTH = 0.7
MAX_IMAGES = 4  # input images of one edit, for the hosted models that take several (GPT image models)
_FILES = {"image", "image[]", "mask"}
_INTEGERS = ("n", "seed", "num_inference_steps", "output_compression", "partial_images")
_NUMBERS = ("guidance_scale", "strength")
_VARIATION_FIELDS = {"model", "n", "size", "response_format", "user", "seed", "num_inference_steps",
                     "guidance_scale", "strength", "output_format", "output_compression"}
_MULTIPART = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary"}, "mask": {"type": "string", "format": "binary"},
                   "prompt": {"type": "string"}, "model": {"type": "string"}, "n": {"type": "integer"},
                   "size": {"type": "string"}, "response_format": {"type": "string", "enum": ["url", "b64_json"]},
                   "strength": {"type": "number", "minimum": 0, "maximum": 1}}}}}}}


def _text_fields(form: FormData, allowed: set[str] | None) -> dict[str, Any]:
    """The text fields, numbers parsed (a 400 naming the field when they are not numbers)."""
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in _FILES:
            continue
        if isinstance(value, UploadFile):
            raise InvalidRequest(f"'{name}' must be a text field, not a file.", param=name)
        if allowed is not None and name not in allowed:
            raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
        if name in fields:
            raise InvalidRequest(f"'{name}' was given more than once.", param=name)
        if name == "stream":
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidRequest(f"Invalid value for 'stream': {value!r}; expected true or false.", param=name)
            fields[name] = value.lower() in ("true", "1")
            continue
        try:
            fields[name] = int(value) if name in _INTEGERS else float(value) if name in _NUMBERS else value
        except ValueError:
            kind = "an integer" if name in _INTEGERS else "a number"
            raise InvalidRequest(f"Invalid type for '{name}': expected {kind}, but got {value!r}.",
                                 param=name) from None
    return fields


def snapped_size(width: int, height: int, spec: ModelSpec) -> str:
    """The input's size as the model takes it: scaled into its bounds, sides on its grid, or else the listed
    size nearest in shape."""
    if spec.custom_sizes:
        scale = min(1.0, CUSTOM_SIZE_MAX / max(width, height))
        scale = max(scale, CUSTOM_SIZE_MIN / min(width, height))
        sides = [min(CUSTOM_SIZE_MAX, max(CUSTOM_SIZE_MIN,
                                          round(side * scale / CUSTOM_SIZE_MULTIPLE) * CUSTOM_SIZE_MULTIPLE))
                 for side in (width, height)]
        return f"{sides[0]}x{sides[1]}"
    fixed = [tuple(map(int, size.split("x"))) for size in spec.sizes if "x" in size]
    best = min(fixed, key=lambda wh: (abs(np.log(wh[0] / wh[1] * height / width)),  # the shape first,
                                      abs(np.log(wh[0] * wh[1] / (width * height)))))  # then the area
    return f"{best[0]}x{best[1]}"


def model_of(request: Request, form: FormData) -> ModelSpec | None:
    """The model the form names (or the default one); None for an unknown id (reported later, by name)."""
    settings = request.app.state.settings
    name = form.get("model")
    return request.app.state.registry.get(name if isinstance(name, str) and name else settings.default_model)


def _mask_of(upload: Upload | None, image: Upload) -> Image.Image | None:
    """The region to repaint as a mode-"1"-like L image (255 = repaint), from the mask's (or the image's own)
    fully transparent pixels; None for a whole-image edit."""
    source = upload.image if upload is not None else image.image
    has_alpha = source.mode in ("RGBA", "LA", "PA") or "transparency" in source.info
    if not has_alpha:
        if upload is not None:
            raise InvalidRequest("'mask' must be a PNG with an alpha channel: its fully transparent pixels mark "
                                 "where to edit.", param="mask")
        return None
    alpha = np.asarray(source.convert("RGBA").getchannel("A"))
    if upload is not None and source.size != image.image.size:
        raise InvalidRequest(f"'mask' is {source.size[0]}x{source.size[1]} but 'image' is "
                             f"{image.image.size[0]}x{image.image.size[1]}: they must be the same size.",
                             param="mask")
    if not (alpha == 0).any():
        if upload is not None:
            raise InvalidRequest("'mask' has no fully transparent pixels: nothing to edit.", param="mask")
        return None
    return Image.fromarray(((alpha == 0) * 255).astype(np.uint8))


async def _request_from_form(request: Request, form: FormData, request_id: str, *,
                             variation: bool) -> tuple[Any, ModelSpec, Delivery, bool]:
    state = request.app.state
    settings = state.settings
    images = form.getlist("image") + form.getlist("image[]")
    if variation and form.get("mask") is not None:
        raise InvalidRequest("Unrecognized request argument supplied: mask (variations take no mask)", param="mask")
    if not images:
        raise InvalidRequest("image is required", param="image")
    model = model_of(request, form)
    if len(images) > 1 and (variation or model is None or model.provider != "openai"):
        raise InvalidRequest("Only one 'image' is taken here: several input images are for OpenAI's GPT image "
                             "models (an id mapped to one); the local models and the other vendors take one.",
                             param="image")
    fields = _text_fields(form, _VARIATION_FIELDS if variation else None)
    strength = fields.pop("strength", settings.variation_strength if variation else EDIT_STRENGTH)
    if not 0 < strength <= 1:
        raise InvalidRequest(f"Invalid value for 'strength': {strength}; it must be greater than 0 and at most 1.",
                             param="strength")
    if variation:
        fields["prompt"] = "a variation"  # checked like any prompt, then replaced by the empty prompt
    body: ImageGenerationBody = parse_fields(fields)
    if model is not None and not model.is_local:  # what each hosted model takes, refused before any upload work
        if not (model.variations if variation else model.edits):
            raise InvalidRequest(f"Model '{model.id}' cannot {'make variations' if variation else 'edit images'} "
                                 "through this server.", param="model")
        if model.edit_needs_mask and not variation and form.get("mask") is None:
            raise InvalidRequest(f"Model '{model.id}' edits need a mask: send 'mask', a PNG whose transparent "
                                 "pixels mark where to edit.", param="mask")
    if model is not None and not model.inpainting and form.get("mask") is not None:
        raise InvalidRequest(f"Model '{model.id}' cannot edit with a mask (it cannot inpaint); leave out 'mask' "
                             "for an edit of the whole image.", param="mask")
    image = await decode_upload(images[0], "image", settings.max_image_pixels)
    mask_field = form.get("mask")
    mask_upload = None if mask_field is None or variation else await decode_upload(mask_field, "mask",
                                                                                   settings.max_image_pixels)
    if model is not None and body.size is None:
        body = body.model_copy(update={"size": snapped_size(*image.image.size, model)})
    generation, spec = to_generation_request(body, state.registry, settings.default_model, request_id)
    size = (generation.width, generation.height)
    pixels = np.asarray(image.image.convert("RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.uint8)
    mask = None if variation else _mask_of(mask_upload, image)
    region = None if mask is None else np.asarray(mask.resize(size, Image.Resampling.NEAREST)) > 127
    references = tuple([np.asarray((await decode_upload(extra, "image", settings.max_image_pixels)).image
                                   .convert("RGB"), dtype=np.uint8) for extra in images[1:]])
    edit = ImageEdit(pixels, region, float(strength), variation=variation, references=references)
    generation = dataclasses.replace(generation, edit=edit, prompt="" if variation else generation.prompt)
    delivery = Delivery(output_format=body.output_format, compression=body.output_compression, b64=body.wants_b64,
                        link_base=settings.public_url or str(request.base_url))
    return generation, spec, delivery, bool(body.stream)


@with_cancellation
async def _edit(request: Request, form: FormData, principal: Principal, request_id: str, variation: bool) -> Answer:
    generation, spec, delivery, _ = await _request_from_form(request, form, request_id, variation=variation)
    return await request.app.state.service.generate(generation, spec, delivery, principal)


async def _answer(request: Request, principal: Principal, request_id: str, variation: bool) -> Response:
    # The body is read first: while the work runs, the disconnect watch owns the request's receive channel.
    settings = request.app.state.settings
    form = await read_form(request, settings.max_upload_bytes, settings.max_json_bytes, MAX_IMAGES)
    if not variation and form.get("stream") in ("true", "1"):  # streamed edits: image_edit.* events
        try:
            generation, spec, delivery, _ = await _request_from_form(request, form, request_id, variation=False)
        finally:
            await form.close()
        return await stream_images(request, generation, spec, delivery, principal, request_id, "image_edit")
    try:
        answer = await _edit(request, form, principal, request_id, variation)
    finally:
        await form.close()
    rendered = await asyncio.to_thread(render_json, answer.body)
    record_stages(request, answer.model, answer.stages)
    return Response(rendered, media_type="application/json", headers={REQUEST_ID_HEADER: request_id})


@router.post("/v1/images/edits", openapi_extra=_MULTIPART)
async def edit_images(request: Request, request_id: ImageRequestId, principal: Authenticated) -> Response:
    return await _answer(request, principal, request_id, variation=False)


@router.post("/v1/images/variations", openapi_extra=_MULTIPART)
async def image_variations(request: Request, request_id: ImageRequestId, principal: Authenticated) -> Response:
    return await _answer(request, principal, request_id, variation=True)
