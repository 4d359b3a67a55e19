"""The OpenAPI document says what every route can answer: each error response with its schema (OpenAI's error
shape, `server.api.errors.body_of`), and never FastAPI's 422, which this server does not send (its own
validation answers 400 naming the parameter)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string", "description": "the error's stable name, e.g. invalid_request_error"},
            "param": {"type": ["string", "null"], "description": "the request parameter it is about"},
            "code": {"type": ["string", "null"]},
            "retry_after": {"type": "integer", "description": "quota refusals: seconds until it fits"}}}},
}

DESCRIPTIONS = {
    400: "Bad input, named in `param`; a content policy refusal", 401: "No key, or a wrong one",
    403: "A tampered image link", 404: "No such model or image", 410: "An expired image link",
    413: "A body or an uploaded file over its limit", 429: "Over a quota, or too many wrong keys (Retry-After)",
    500: "The model failed; the error was logged", 502: "The vendor failed or answered something unusable",
    503: "Not available now: the model cannot run here (x-should-retry: false), a full queue, a lost replica, "
         "the image store or the content policy service down (Retry-After)",
}
IMAGE_ERRORS = (400, 401, 413, 429, 500, 502, 503)
ERRORS_BY_ROUTE: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/images/generations"): IMAGE_ERRORS,
    ("post", "/v1/images/edits"): IMAGE_ERRORS,
    ("post", "/v1/images/variations"): IMAGE_ERRORS,
    ("get", "/v1/images/files/{name}"): (403, 404, 410, 503),
    ("get", "/v1/models"): (401,),
    ("get", "/v1/models/{model_id}"): (401, 404),
    ("get", "/v1/usage"): (400, 401),
}


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error responses to `schema` (an OpenAPI document) and drop every 422 and its schemas."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in ERRORS_BY_ROUTE.get((method, path), ()):
                responses[str(status)] = {"description": DESCRIPTIONS[status], "content": error}
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(get_openapi(title=app.title, version=app.version,
                                                             routes=app.routes, description=app.description))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
