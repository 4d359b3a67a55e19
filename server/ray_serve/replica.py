"""A local model's replica: the engine (scheduler, runner, optimizations) for one model, as a Serve deployment.

Each replica builds the model's backend exactly as the single-process server does (`build_backend`: its
devices, batching, warm-up, OOM halving), loads it when it starts, and answers each request with a
`ReplicaAnswer`: the result or the engine's error, and the batches its devices ran since its previous
answer (for the front end's metrics). `perf.device` names the replica and the device:
`<deployment>#<replica tag>/<device>`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ray import serve

from pipelines.errors import ImageServeError
from pipelines.types import GenerationRequest
from server.backends.factory import build_backend
from server.backends.remote import BatchEvent, ReplicaAnswer
from server.ray_serve.source import load_from_source
from server.registry import build_registry

logger = logging.getLogger(__name__)


@serve.deployment
class ModelReplica:
    async def __init__(self, model_id: str, source: dict[str, Any]) -> None:
        settings = load_from_source(source)
        spec = build_registry(settings).get(model_id)
        if spec is None or not spec.is_local:
            raise ValueError(f"'{model_id}' is not a local model in these settings")
        context = serve.get_replica_context()
        self.replica = f"{context.deployment}#{context.replica_tag}"
        self._batches: list[BatchEvent] = []
        self.backend = build_backend(spec, settings, observer=self._record_batch)
        await self.backend.start()
        try:
            await self.backend.preload()  # the replica is ready once its model is
        except ImageServeError as exc:  # e.g. no weights on this node: requests get the same clear 503
            logger.error("replica %s: model %s cannot load: %s", self.replica, model_id, exc.message)

    def _record_batch(self, device: str, images: int, seconds: float) -> None:
        self._batches.append((f"{self.replica}/{device}", images, seconds))

    def _drain_batches(self) -> list[BatchEvent]:
        batches, self._batches = self._batches, []
        return batches

    async def generate(self, request: GenerationRequest) -> ReplicaAnswer:
        try:
            result = await self.backend.generate(request)
        except ImageServeError as exc:
            exc.__traceback__ = None
            return ReplicaAnswer(self.replica, error=exc, batches=self._drain_batches())
        devices = ",".join(f"{self.replica}/{device}" for device in (result.device or "").split(",") if device)
        return ReplicaAnswer(self.replica, result=dataclasses.replace(result, device=devices),
                             batches=self._drain_batches())

    async def describe(self) -> dict[str, Any]:
        return {"replica": self.replica, **self.backend.describe()}

    async def __del__(self) -> None:
        await self.backend.close()
