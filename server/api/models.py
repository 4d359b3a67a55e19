"""`GET /v1/models` and `GET /v1/models/{id}`: OpenAI's model list, with what each model accepts and costs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from pipelines.types import ImageBackend
from server.api.deps import authenticate
from server.errors import NotFound
from server.registry import ModelRegistry, ModelSpec

router = APIRouter(dependencies=[Depends(authenticate)])


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    backends: dict[str, ImageBackend] = request.app.state.backends
    return {"object": "list", "data": [model_card(spec, backends[spec.id]) for spec in registry]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    spec = request.app.state.registry.get(model_id)
    if spec is None:
        raise NotFound(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
    return model_card(spec, request.app.state.backends[model_id])


def model_card(spec: ModelSpec, backend: ImageBackend) -> dict[str, Any]:
    """The OpenAI model object, plus the model's rules and prices, whether it is ready, and what its backend
    says of itself (device, dtype, optimizations for a local model)."""
    readiness = backend.readiness()
    card: dict[str, Any] = {
        "id": spec.id,
        "object": "model",
        "created": 0,
        "owned_by": spec.provider if spec.provider != "local" else "imageserve",
        "provider": spec.provider,
        "local": spec.is_local,
        "description": spec.description,
        "sizes": list(spec.sizes) + (["custom"] if spec.custom_sizes else []),
        "max_images": spec.max_images,
        "price_usd_per_image": spec.price_usd,
        "qualities": list(spec.qualities),
        "styles": list(spec.styles),
        "extra_params": sorted(spec.extra_params),
        # What /v1/images/edits and /variations take for it (local models: both, a mask if it can inpaint).
        "edits": {"edits": spec.is_local or spec.edits, "variations": spec.is_local or spec.variations,
                  "mask": spec.inpainting if spec.is_local else spec.edits,
                  "needs_mask": spec.edit_needs_mask},
        "ready": readiness.ready,
        "status": readiness.detail,
    }
    if spec.price_hd_usd is not None:
        card["price_usd_per_image_hd"] = spec.price_hd_usd
    if spec.price_by_size:
        card["price_usd_by_size"] = dict(spec.price_by_size)
    card.update(backend.describe())
    return card
