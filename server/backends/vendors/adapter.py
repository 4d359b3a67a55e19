"""The `ImageBackend` side of a vendor adapter: lifecycle, the shared connection, logging, the result."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pipelines.errors import ImageServeError
from pipelines.types import BackendStats, GeneratedImage, GenerationRequest, GenerationResult, Readiness
from server.backends.vendors.connection import PROVIDER_NAMES, Vendor, VendorPool
from server.backends.vendors.connection import inspect_image as inspect_image
from server.errors import InvalidRequest, UpstreamError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from server.registry import ModelSpec
    from server.settings import ProviderSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# One pool for the process. It is only a dict: nothing is opened until a backend starts.
POOL = VendorPool()


class VendorBackend:
    """Base for the four adapters: subclasses implement `_generate(vendor, request) -> images`."""

    provider: ClassVar[str]
    config: ProviderSettings  # subclasses narrow it to their provider's settings class

    def __init__(self, spec: ModelSpec, config: ProviderSettings) -> None:
        self.spec = spec
        self.config = config  # this provider's settings only
        self.provider_name = PROVIDER_NAMES[self.provider]
        self._vendor: Vendor | None = None

    async def start(self) -> None:
        if self._vendor is None:
            self._vendor = POOL.acquire(self.provider, self.config)

    async def close(self) -> None:
        vendor, self._vendor = self._vendor, None
        if vendor is not None:
            await POOL.release(vendor)

    async def preload(self) -> None:
        """Nothing to load: the vendor runs the model."""
        return

    def readiness(self) -> Readiness:
        return Readiness(True, f"forwarded to {self.provider_name} as '{self.upstream_model()}'")

    def describe(self) -> dict[str, Any]:
        """No device or dtype here: the model card's provider fields say where it runs."""
        return {}

    def stats(self) -> BackendStats:
        """Nothing queues here; waiting for a vendor slot is bounded and answered 503 (`QueueFull`)."""
        return BackendStats()

    def upstream_model(self) -> str:
        raise NotImplementedError

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if request.edit is not None and not self.spec.edits:  # the API refuses these first; never generate instead
            raise InvalidRequest(f"Model '{self.spec.id}' cannot edit images through this server.", param="model")
        if self._vendor is None:  # the service starts backends, but a lazy start costs nothing
            await self.start()
        assert self._vendor is not None
        started = time.perf_counter()
        try:
            images, extra = await self._generate(self._vendor, request)
            upstream_ms = (time.perf_counter() - started) * 1000
        except ImageServeError as exc:
            logger.info(
                "request %s: %s %s failed: %s",
                request.request_id,
                self.provider_name,
                self.upstream_model(),
                exc.type,
            )
            raise
        if not images:
            raise UpstreamError(f"{self.provider_name} returned no images.", code="upstream_bad_response")
        width, height = images[0][1]
        logger.info(
            "request %s: %s %s made %d/%d image(s) %dx%d in %.0f ms",
            request.request_id,
            self.provider_name,
            self.upstream_model(),
            len(images),
            request.n,
            width,
            height,
            upstream_ms,
        )
        return GenerationResult(
            images=[image for image, _ in images],
            width=width,
            height=height,
            quality=request.quality,
            upstream_ms=round(upstream_ms, 1),
            extra={"provider": self.provider, "upstream_model": self.upstream_model(), **extra},
        )

    async def _generate(
        self, vendor: Vendor, request: GenerationRequest
    ) -> tuple[list[tuple[GeneratedImage, tuple[int, int]]], dict[str, object]]:
        """Return the images, each with its real (width, height), plus extra result details."""
        raise NotImplementedError

    async def image(
        self, vendor: Vendor, data: bytes, *, seed: int | None = None, revised_prompt: str | None = None
    ) -> tuple[GeneratedImage, tuple[int, int]]:
        """The vendor's bytes as our image, once they are known to decode (in a thread: it is CPU work)."""
        info = await asyncio.to_thread(inspect_image, data, vendor)
        return (
            GeneratedImage(data=data, mime_type=info.mime_type, seed=seed, revised_prompt=revised_prompt),
            (info.width, info.height),
        )


async def run_all(jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Run jobs concurrently; the first failure cancels the rest and is raised as itself.

    A TaskGroup also cancels every job when the caller is cancelled (client gone), and waits for them.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(job)) for job in jobs]
    except ExceptionGroup as failures:
        first = failures.exceptions[0]
        while isinstance(first, ExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


async def _as_coroutine(job: Awaitable[T]) -> T:
    return await job
