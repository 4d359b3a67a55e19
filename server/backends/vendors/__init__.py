"""Adapters that forward the closed models to their vendors (OpenAI, Black Forest Labs, Ideogram, Google).

Each adapter is an `ImageBackend` like the local pipelines. `build_vendor_backend` is what
`server.backends.factory.BACKEND_FACTORIES` calls for the vendor kinds; a provider without an API key gives a
backend that is listed as not ready and answers 503 `model_unavailable` naming the setting to fill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.backends.vendors.adapter import VendorBackend
from server.backends.vendors.bfl import BFLBackend
from server.backends.vendors.connection import PROVIDER_NAMES
from server.backends.vendors.google import GoogleBackend
from server.backends.vendors.ideogram import IdeogramBackend
from server.backends.vendors.openai_images import OpenAIImagesBackend
from server.settings import provider_env_name

if TYPE_CHECKING:
    from server.registry import ModelSpec
    from server.settings import ProviderSettings

VENDOR_BACKENDS: dict[str, type[VendorBackend]] = {
    "openai": OpenAIImagesBackend,
    "bfl": BFLBackend,
    "ideogram": IdeogramBackend,
    "google": GoogleBackend,
}


def build_vendor_backend(spec: ModelSpec, config: ProviderSettings) -> VendorBackend | None:
    """The adapter for `spec` with its provider's settings, or None when the provider has no API key (the
    caller answers with a backend that says which setting to fill: `vendor_key_missing`)."""
    backend_cls = VENDOR_BACKENDS[spec.kind]
    if not config.has_key():
        return None
    return backend_cls(spec, config)


def vendor_key_missing(kind: str) -> str:
    """Why a vendor model is unavailable without a key, naming the setting."""
    provider = VENDOR_BACKENDS[kind].provider
    return f"no {PROVIDER_NAMES[provider]} API key is configured; set {provider_env_name(provider, 'api_key')}"


def provider_of(kind: str) -> str:
    return VENDOR_BACKENDS[kind].provider


__all__ = ["VENDOR_BACKENDS", "VendorBackend", "build_vendor_backend", "provider_of", "vendor_key_missing"]
