"""Which backend serves which model kind: one table, no if/elif chain.

Local kinds run diffusers pipelines (`pipelines.local`); vendor kinds forward to a hosted API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines.errors import ModelUnavailable
from pipelines.types import GenerationRequest, GenerationResult, Readiness

if TYPE_CHECKING:
    from pipelines.types import ImageBackend
    from server.registry import ModelSpec
    from server.settings import Settings


class UnavailableBackend:
    """A model that is listed and validated but cannot run here; every request gets a clear 503."""

    def __init__(self, spec: ModelSpec, reason: str) -> None:
        self.spec = spec
        self.reason = reason

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def readiness(self) -> Readiness:
        return Readiness(False, self.reason)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        raise ModelUnavailable(f"Model '{self.spec.id}' is not available: {self.reason}")


def _local_backend(spec: ModelSpec, settings: Settings) -> ImageBackend:
    from pipelines.local import LocalDiffusersBackend

    return LocalDiffusersBackend(spec, settings)


def _simulated_backend(spec: ModelSpec, settings: Settings) -> ImageBackend:
    from pipelines.simulated import SimulatedBackend

    return SimulatedBackend(spec, settings)


def _vendor_backend(spec: ModelSpec, settings: Settings) -> ImageBackend:
    from server.backends.vendors import build_vendor_backend

    return build_vendor_backend(spec, settings)


BACKEND_FACTORIES: dict[str, Callable[[ModelSpec, Settings], ImageBackend]] = {
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


def build_backend(spec: ModelSpec, settings: Settings) -> ImageBackend:
    factory = BACKEND_FACTORIES.get(spec.kind)
    if factory is None:
        return UnavailableBackend(spec, f"unknown model kind '{spec.kind}' in the settings")
    return factory(spec, settings)
