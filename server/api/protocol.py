"""The wire format of `POST /v1/images/generations`: parsing, type checks, and model rules.

Every rejection is an `InvalidRequest` naming the offending parameter, in OpenAI's words where OpenAI
has them. Types are checked strictly (no "2" for 2), unknown fields are refused by name. Checks that
depend on the model (its sizes, `n`, quality, style, extensions) run against its `ModelSpec`, so
the vendor never sees a request we would reject.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from pipelines.types import SEED_MAX, GenerationRequest, split_size
from server.errors import InvalidRequest
from server.registry import CUSTOM_SIZE_MAX, CUSTOM_SIZE_MIN, CUSTOM_SIZE_MULTIPLE, ModelRegistry, ModelSpec

MAX_PROMPT_CHARS = 4000


class ImageGenerationBody(BaseModel):
    """The JSON body, typed. `None` means "not sent": defaults are filled in by `to_generation_request`."""

    model_config = ConfigDict(extra="forbid")

    prompt: StrictStr = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: StrictStr | None = None
    n: StrictInt | None = Field(default=None, ge=1)  # the bound is the model's (`_check_model_rules`), said once
    size: StrictStr | None = None
    quality: Literal["standard", "hd"] | None = None
    style: Literal["vivid", "natural"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    user: StrictStr | None = Field(default=None, max_length=256)
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: StrictInt | None = Field(default=None, ge=0, le=100)
    stream: StrictBool | None = None  # server-sent events: previews, then the completed images
    partial_images: StrictInt | None = Field(default=None, ge=0, le=3)
    # Extensions, sent by clients as extra body keys.
    negative_prompt: StrictStr | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    seed: StrictInt | None = Field(default=None, ge=0, le=SEED_MAX)
    num_inference_steps: StrictInt | None = Field(default=None, ge=1, le=100)
    guidance_scale: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=30)

    @property
    def wants_b64(self) -> bool:
        return self.response_format == "b64_json"


_EXTENSIONS = ("negative_prompt", "seed", "num_inference_steps", "guidance_scale")


def _describe(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _message_for(error: dict[str, Any]) -> tuple[str, str | None]:
    """Turn pydantic's first error into (message, param) in OpenAI's style."""
    location = error.get("loc") or ()
    param = str(location[0]) if location else None
    kind = error.get("type", "")
    value = error.get("input")
    context = error.get("ctx") or {}
    if kind == "missing":
        return f"{param} is required", param
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if kind == "literal_error":
        expected = context.get("expected", "")
        return f"Invalid value for '{param}': {value!r}. Supported values are: {expected}.", param
    if kind == "string_too_short":
        return f"{param} must not be empty", param
    if kind == "string_too_long":
        return f"{param} is too long: at most {context.get('max_length')} characters are allowed", param
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = next(iter(context.values()), "")
        relation = {"greater_than_equal": "at least", "less_than_equal": "at most",
                    "greater_than": "greater than", "less_than": "less than"}[kind]
        return f"Invalid value for '{param}': {value!r}; it must be {relation} {bound}.", param
    expected = {"string_type": "a string", "int_type": "an integer", "float_type": "a number",
                "bool_type": "a boolean"}.get(kind)
    if expected is None and kind.endswith("_type"):
        expected = "a " + kind.removesuffix("_type")
    if expected is not None:
        return f"Invalid type for '{param}': expected {expected}, but got {_describe(value)}.", param
    return f"Invalid value for '{param}': {error.get('msg', 'invalid')}", param


def parse_body(raw: bytes) -> ImageGenerationBody:
    """Bytes to a typed body, or a 400 naming what is wrong."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest(f"The request body must be a JSON object, not {_describe(payload)}.")
    return parse_fields(payload)


def parse_fields(payload: dict[str, Any]) -> ImageGenerationBody:
    """Decoded fields (a JSON object, or a multipart form's text fields with numbers parsed) to a typed body."""
    try:
        return ImageGenerationBody.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # Report a missing prompt first, then the body's own order.
        errors.sort(key=lambda e: (e.get("type") != "missing",))
        message, param = _message_for(errors[0])
        raise InvalidRequest(message, param=param) from None


def _parse_size(size: str, spec: ModelSpec) -> tuple[int, int]:
    allowed = ", ".join(spec.sizes)
    if spec.custom_sizes:
        allowed += (f", or any WxH with sides multiples of {CUSTOM_SIZE_MULTIPLE} from "
                    f"{CUSTOM_SIZE_MIN} to {CUSTOM_SIZE_MAX}")
    parsed = split_size(size)
    if parsed is None:
        raise InvalidRequest(f"Invalid value for 'size': {size!r}. Expected WIDTHxHEIGHT; model '{spec.id}' "
                             f"takes {allowed}.", param="size")
    width, height = parsed
    if not spec.accepts_size(width, height):
        raise InvalidRequest(f"Invalid value for 'size': {size!r} is not supported by model '{spec.id}'. "
                             f"Supported: {allowed}.", param="size")
    return width, height


def _check_model_rules(body: ImageGenerationBody, spec: ModelSpec) -> None:
    if body.partial_images and not body.stream:
        raise InvalidRequest("'partial_images' needs 'stream': true.", param="partial_images")
    if body.stream and body.response_format == "url":
        raise InvalidRequest("A streamed answer carries its images as base64: leave out response_format=url.",
                             param="response_format")
    n = body.n or 1
    if n > spec.max_images:  # every model's max is at most 10, OpenAI's bound
        detail = "only n=1 is supported" if spec.max_images == 1 else f"n must be between 1 and {spec.max_images}"
        raise InvalidRequest(f"Invalid value for 'n': {n}. For model '{spec.id}', {detail}.", param="n")
    if body.quality is not None and body.quality not in spec.qualities:
        raise InvalidRequest(f"Invalid value for 'quality': {body.quality!r}. Model '{spec.id}' supports "
                             f"{', '.join(spec.qualities)} ('hd' is dall-e-3 only).", param="quality")
    if body.style is not None and body.style not in spec.styles:
        raise InvalidRequest(f"'style' is not supported by model '{spec.id}' (only dall-e-3 takes a style).",
                             param="style")
    for name in _EXTENSIONS:
        if getattr(body, name) is not None and name not in spec.extra_params:
            raise InvalidRequest(f"'{name}' is not supported by model '{spec.id}'.", param=name)


def to_generation_request(
    body: ImageGenerationBody, registry: ModelRegistry, default_model: str, request_id: str
) -> tuple[GenerationRequest, ModelSpec]:
    """Check the body against its model and normalise it into the internal request."""
    model_id = default_model if body.model is None else body.model
    spec = registry.get(model_id)
    if spec is None:
        raise InvalidRequest(f"The model '{model_id}' does not exist. Available models: "
                             f"{', '.join(registry.ids())}.", param="model", code="model_not_found")
    _check_model_rules(body, spec)
    width, height = _parse_size(body.size or spec.default_size, spec)
    request = GenerationRequest(
        request_id=request_id,
        model=spec.id,
        prompt=body.prompt,
        n=body.n or 1,
        width=width,
        height=height,
        quality=body.quality or "standard",
        style=body.style or ("vivid" if spec.styles else None),
        negative_prompt=body.negative_prompt,
        seed=body.seed,
        num_inference_steps=body.num_inference_steps,
        guidance_scale=float(body.guidance_scale) if body.guidance_scale is not None else None,
        user=body.user,
        partial_images=body.partial_images or 0,
    )
    return request, spec
