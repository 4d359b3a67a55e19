"""The image service: a validated request in, an OpenAI-format answer (plus `perf`) out.

The HTTP edge validates the body and resolves the model (`server.api.protocol`), then calls this. It checks
a local model's request against the content policy (`ContentCheck`, if any), admits the request (quotas), asks
the model's backend for images, encodes and stores them off the event loop (so the GPU thread never waits on
PNG encoding), prices the result and settles the usage ledger. Quotas and the ledger plug in through
`UsageGate`; the service knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.errors import ImageServeError
from pipelines.types import GeneratedImage, GenerationRequest, GenerationResult, ImageBackend
from server.accounts.credentials import Principal
from server.accounts.outcome import Outcome
from server.media.encoding import MIME_TO_FORMAT, encode_pixels, transcode
from server.media.stored import ImageStore
from server.registry import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """How the client wants its images back: format and compression (None: PNG for local models, the
    vendor's own format for hosted ones), base64 in the answer or a signed link, and the base of that link
    (where the client reached us; None: the configured base)."""

    output_format: str | None = None
    compression: int | None = None
    b64: bool = False
    link_base: str | None = None


@dataclass(frozen=True)
class Answer:
    """What `ImageService.generate` gives back: the OpenAI-format body (with `perf`), and where the time went,
    in milliseconds per stage, for the HTTP edge's `Server-Timing` header and the stage metrics. The stages
    are those that applied: `queue` and `device` (local models, from the scheduler), `upstream` (vendors: the
    wall time of the vendor call), `encode` (encoding and base64) and `store` (url answers only). See
    `_materialize` for how encode and store are measured."""

    model: str
    body: dict[str, Any]
    stages: dict[str, float]


class UsageGate(Protocol):
    """Admission before work (quotas) and accounting after it (ledger). See `server.accounts.ledger`."""

    async def admit(self, principal: Principal, request: GenerationRequest) -> None:
        """Reserve `request.n` images for the principal or raise `RateLimitExceeded`."""
        ...

    async def settle(self, outcome: Outcome, reserved: int) -> None:
        """Record the outcome; give back reserved images that were not produced."""
        ...


class ContentCheck(Protocol):
    """A content policy for local models (`server.content_policy.ContentPolicy`): it returns, or raises to
    refuse. Run before quota admission, so a refusal reserves and bills nothing."""

    async def check(self, request: GenerationRequest, request_id: str) -> None: ...


class NoUsageLimits:
    async def admit(self, principal: Principal, request: GenerationRequest) -> None:
        return None

    async def settle(self, outcome: Outcome, reserved: int) -> None:
        return None


class ImageService:
    def __init__(
        self,
        backends: dict[str, ImageBackend],
        store: ImageStore,
        usage: UsageGate | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        policy: ContentCheck | None = None,
    ) -> None:
        self.backends = backends
        self.store = store
        self.usage: UsageGate = usage or NoUsageLimits()
        self.on_outcome = on_outcome  # metrics: every request that named a known model, admitted or not
        self.policy = policy  # local models only: vendors apply their own
        # Encoding has its own threads, one per core: a burst of big images then cannot starve the default
        # pool that key lookups and quota admission use, nor oversubscribe the CPU.
        self._encoder = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="encode")

    def ready_models(self) -> list[str]:
        """The ids of the models that can serve now (their backends' readiness), in the registry's order."""
        return [model_id for model_id, backend in self.backends.items() if backend.readiness().ready]

    def close(self) -> None:
        self._encoder.shutdown(wait=False, cancel_futures=True)

    async def generate(
        self, request: GenerationRequest, spec: ModelSpec, delivery: Delivery, principal: Principal
    ) -> Answer:
        """Check (content policy), admit, generate, encode and store, price and settle one validated request."""
        started = time.perf_counter()
        request_id = request.request_id
        try:
            if self.policy is not None and spec.is_local:
                await self.policy.check(request, request_id)
            await self.usage.admit(principal, request)
        except (ImageServeError, asyncio.CancelledError) as exc:  # refused, or the client left while it was decided
            if self.on_outcome is not None:
                status = exc.type if isinstance(exc, ImageServeError) else "cancelled"
                self.on_outcome(Outcome(principal, request_id, spec.id, 0, request.size, request.quality, 0.0,
                                        (time.perf_counter() - started) * 1000, status))
            raise
        result: GenerationResult | None = None
        status = "error"
        try:
            result = await self.backends[spec.id].generate(request)
            data, encode_ms, store_ms = await self._materialize(result, delivery, request_id)
            status = "ok"
        except ImageServeError as exc:
            status = exc.type
            raise
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            produced = len(result.images) if result is not None and status == "ok" else 0
            size = result.size if result is not None else request.size
            quality = result.quality if result is not None else request.quality
            outcome = Outcome(principal, request_id, spec.id, produced, size, quality,
                              spec.cost(produced, size, quality), latency_ms, status)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
            try:
                await asyncio.shield(self.usage.settle(outcome, request.n))
            except Exception as exc:  # the request's real outcome stands; a ledger failure must not replace it
                logger.error("%s: could not record usage (%s: %.200s); its reservation is released later as stale",
                             request_id, type(exc).__name__, exc)
        assert result is not None
        body = {"created": int(time.time()), "data": data, "perf": self._perf(spec, result, outcome)}
        stages = {name: ms for name, ms in (("queue", result.queue_ms), ("device", result.device_ms),
                                            ("upstream", result.upstream_ms)) if ms is not None}
        stages["encode"] = encode_ms
        if not delivery.b64:
            stages["store"] = store_ms
        return Answer(spec.id, body, stages)

    @staticmethod
    def _perf(spec: ModelSpec, result: GenerationResult, outcome: Outcome) -> dict[str, Any]:
        perf: dict[str, Any] = {
            "request_id": outcome.request_id,
            "model_used": spec.id,
            "size": result.size,
            "quality": result.quality,
            "cost_usd": outcome.cost_usd,
            "latency_ms": round(outcome.latency_ms, 1),
        }
        if result.batch_size is not None:
            perf["batch_size"] = result.batch_size
        if result.device_ms is not None:
            perf["device_ms"] = result.device_ms
        if result.device:  # where the batch ran: e.g. "cuda:1", or "cuda:0,cuda:1" for images from two batches
            perf["device"] = result.device
        # Forwarded models: which vendor model really made the image (ids can be remapped in the settings).
        for key in ("provider", "upstream_model"):
            if key in result.extra:
                perf[key] = result.extra[key]
        return perf

    async def _materialize(
        self, result: GenerationResult, delivery: Delivery, request_id: str
    ) -> tuple[list[dict[str, Any]], float, float]:
        """Encode and store every image concurrently on the encoder threads; the entries, then the step's
        wall time in ms split into encode and store.

        The images are encoded in parallel (and may wait for a thread other requests hold), so neither the sum
        nor the maximum of the per-image times is what the request waited. What it waited is the wall time of
        this step; that is split between encode and store in proportion to the summed per-image times of each,
        so the two stages add up to the real wait and each keeps its share of the work."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        done = await asyncio.gather(*(
            loop.run_in_executor(self._encoder, self._materialize_one, image, delivery, request_id)
            for image in result.images
        ))
        wall_ms = (time.perf_counter() - started) * 1000
        encode_s = sum(encode for _, encode, _ in done)
        store_s = sum(store for _, _, store in done)
        encode_share = encode_s / (encode_s + store_s) if encode_s + store_s > 0 else 1.0
        return [entry for entry, _, _ in done], wall_ms * encode_share, wall_ms * (1 - encode_share)

    def _materialize_one(
        self, image: GeneratedImage, delivery: Delivery, request_id: str
    ) -> tuple[dict[str, Any], float, float]:
        """One image's entry, with the seconds spent encoding it (base64 included) and storing it."""
        started = time.perf_counter()
        output_format = delivery.output_format or "png"
        if image.pixels is not None:
            encoded = encode_pixels(image.pixels, output_format, delivery.compression)
        elif image.data is not None:
            if delivery.output_format is None:  # keep the vendor's own format unless asked otherwise
                output_format = MIME_TO_FORMAT.get(image.mime_type or "", "png")
            encoded = transcode(image.data, output_format, delivery.compression)
        else:  # pragma: no cover - a backend bug
            raise RuntimeError("backend returned an image with neither pixels nor bytes")
        entry: dict[str, Any] = {}
        store_s = 0.0
        if delivery.b64:
            entry["b64_json"] = base64.b64encode(encoded).decode("ascii")
            encode_s = time.perf_counter() - started
        else:
            encode_s = time.perf_counter() - started
            entry["url"] = self.store.save(encoded, output_format, request_id, delivery.link_base)
            store_s = time.perf_counter() - started - encode_s
        if image.revised_prompt is not None:
            entry["revised_prompt"] = image.revised_prompt
        if image.seed is not None:
            entry["seed"] = image.seed
        return entry, encode_s, store_s
