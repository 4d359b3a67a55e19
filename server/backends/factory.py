"""Which backend serves which model kind: one table, no if/elif chain, and the narrow options each gets.

Local kinds run diffusers pipelines (`pipelines.local`), `simulated` a simulated device; vendor kinds forward
to a hosted API (`server.backends.vendors`). This is where the settings are read for a model: the engine gets
a `LocalModelOptions`, never the `Settings` object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipelines.backend import LocalBackend
from pipelines.errors import ModelUnavailable
from pipelines.optimizations import OptimizationOptions
from pipelines.options import FLUX_DEV_H100, DeviceProfile, LocalModelOptions
from pipelines.types import BackendStats, BatchObserver, GenerationRequest, GenerationResult, Readiness
from server.backends.vendors import build_vendor_backend, provider_of, vendor_key_missing

if TYPE_CHECKING:
    from pipelines.types import ImageBackend
    from server.registry import ModelSpec
    from server.settings import ModelSettings, Settings


class UnavailableBackend:
    """A model that is listed and validated but cannot run here; every request gets a clear 503."""

    def __init__(self, spec: ModelSpec, reason: str) -> None:
        self.spec = spec
        self.reason = reason

    async def start(self) -> None:
        return None

    async def preload(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def readiness(self) -> Readiness:
        return Readiness(False, self.reason)

    def describe(self) -> dict[str, Any]:
        return {}

    def stats(self) -> BackendStats:
        return BackendStats()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        raise ModelUnavailable(f"Model '{self.spec.id}' is not available: {self.reason}")


def optimization_options(model: ModelSettings) -> OptimizationOptions:
    """The `[models.<id>]` speed and memory options (`pipelines.optimizations`), and nothing else."""
    return OptimizationOptions.model_validate(model.model_dump(include=set(OptimizationOptions.model_fields)))


def device_profile(model: ModelSettings) -> DeviceProfile:
    """A simulated device's timing; fields left out default to FLUX.1-dev on an H100."""
    base, per_mp = model.step_seconds_base, model.step_seconds_per_megapixel
    return DeviceProfile(
        step_seconds_base=FLUX_DEV_H100.step_seconds_base if base is None else base,
        step_seconds_per_megapixel=FLUX_DEV_H100.step_seconds_per_megapixel if per_mp is None else per_mp,
        time_scale=model.time_scale,
    )


def local_model_options(settings: Settings, model_id: str, *, simulated: bool = False) -> LocalModelOptions:
    """Everything the engine needs to serve `model_id` (a simulated device also gets its timing profile)."""
    model = settings.model_settings(model_id)
    return LocalModelOptions(
        model_cache=settings.model_cache, device=settings.device, dtype=model.dtype or settings.dtype,
        max_batch_images=model.max_batch_images, batch_wait_s=settings.batch_wait_ms / 1000,
        max_queue_images=settings.max_queue_images, optimizations=optimization_options(model),
        devices=model.devices if isinstance(model.devices, str) else tuple(model.devices or ()),
        preview_vae=model.preview_vae,
        profile=device_profile(model) if simulated else None,
    )


def _local_backend(spec: ModelSpec, settings: Settings, observer: BatchObserver | None) -> ImageBackend:
    from pipelines.local import DiffusersDevice

    options = local_model_options(settings, spec.id)
    return LocalBackend(spec, options, DiffusersDevice(spec, options), observer=observer)


def _simulated_backend(spec: ModelSpec, settings: Settings, observer: BatchObserver | None) -> ImageBackend:
    from pipelines.simulated import SimulatedDevice

    options = local_model_options(settings, spec.id, simulated=True)
    return LocalBackend(spec, options, SimulatedDevice(spec, options), observer=observer)


def _vendor_backend(spec: ModelSpec, settings: Settings, observer: BatchObserver | None) -> ImageBackend:
    backend = build_vendor_backend(spec, settings.providers.get(provider_of(spec.kind)))
    return backend if backend is not None else UnavailableBackend(spec, vendor_key_missing(spec.kind))


BACKEND_FACTORIES: dict[str, Callable[[ModelSpec, Settings, BatchObserver | None], ImageBackend]] = {
    "sd3": _local_backend,
    "flux": _local_backend,
    "tiny-sd3": _local_backend,
    "tiny-flux": _local_backend,
    "simulated": _simulated_backend,
    "openai": _vendor_backend,
    "bfl": _vendor_backend,
    "ideogram": _vendor_backend,
    "google": _vendor_backend,
}


def build_backend(spec: ModelSpec, settings: Settings, observer: BatchObserver | None = None) -> ImageBackend:
    """The backend for `spec`; `observer` hears of every batch a local model runs (metrics)."""
    factory = BACKEND_FACTORIES.get(spec.kind)
    if factory is None:
        return UnavailableBackend(spec, f"unknown model kind '{spec.kind}' in the settings")
    return factory(spec, settings, observer)
