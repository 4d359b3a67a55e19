"""Adapters that forward the closed models to their vendors (OpenAI, Black Forest Labs, Ideogram, Google).

Each adapter is an `ImageBackend` like the local pipelines. `build_vendor_backend` is what
`server.backends.factory.BACKEND_FACTORIES` calls for the vendor kinds; a provider without an API key gives a
backend that is listed as not ready and answers 503 `model_unavailable` naming the setting to fill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.backends.vendors.backend import VendorBackend
from server.backends.vendors.base import PROVIDER_NAMES
from server.backends.vendors.bfl import BFLBackend
from server.backends.vendors.google import GoogleBackend
from server.backends.vendors.ideogram import IdeogramBackend
from server.backends.vendors.openai_images import OpenAIImagesBackend
from server.settings import provider_env_name

if TYPE_CHECKING:
    from pipelines.types import ImageBackend
    from server.registry import ModelSpec
    from server.settings import Settings

VENDOR_BACKENDS: dict[str, type[VendorBackend]] = {
    "openai": OpenAIImagesBackend,
    "bfl": BFLBackend,
    "ideogram": IdeogramBackend,
    "google": GoogleBackend,
}


def build_vendor_backend(spec: ModelSpec, settings: Settings) -> ImageBackend:
    from server.backends.factory import UnavailableBackend

    backend_cls = VENDOR_BACKENDS[spec.kind]
    if not settings.providers.get(backend_cls.provider).has_key():
        setting = provider_env_name(backend_cls.provider, "api_key")
        name = PROVIDER_NAMES[backend_cls.provider]
        return UnavailableBackend(spec, f"no {name} API key is configured; set {setting}")
    return backend_cls(spec, settings)


__all__ = ["VENDOR_BACKENDS", "VendorBackend", "build_vendor_backend"]
