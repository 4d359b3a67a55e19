"""A local model served by replicas elsewhere (Ray Serve's model deployments), as an `ImageBackend`.

The HTTP front end keeps everything else (auth, quotas, the ledger, encoding, storage); only `generate` goes
to a replica. `ReplicaCalls` is what this needs of the transport (`server.ray_serve.handles` implements it over
a Ray `DeploymentHandle`), so this module knows nothing of Ray. A replica answers with a `ReplicaAnswer`: the
result or the engine error it raised (an `ImageServeError`, re-raised here as it was), plus the batches its
devices ran since its previous answer, which feed this process's batch metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pipelines.errors import ImageServeError
from pipelines.types import BackendStats, BatchObserver, GenerationRequest, GenerationResult, Readiness

BatchEvent = tuple[str, int, float]  # (device, images, device seconds), as a `BatchObserver` takes them


@dataclass
class ReplicaAnswer:
    """What a model replica sends back for one request (picklable: plain data and numpy arrays)."""

    replica: str
    result: GenerationResult | None = None
    error: ImageServeError | None = None
    batches: list[BatchEvent] = field(default_factory=list)


class ReplicaCalls(Protocol):
    """The transport to a model's replicas. `generate` raises `server.errors.ReplicaLost` when the replica
    died with the request; a replica's own errors come back inside the `ReplicaAnswer`."""

    async def generate(self, request: GenerationRequest) -> ReplicaAnswer: ...

    async def describe(self) -> dict[str, Any]: ...


class RemoteModelBackend:
    """`ImageBackend` of a local model whose pipelines run in other processes (replicas)."""

    def __init__(self, model_id: str, calls: ReplicaCalls, *, observer: BatchObserver | None = None,
                 where: str = "replicas") -> None:
        self.model_id = model_id
        self._calls = calls
        self._observer = observer
        self._where = where
        self._replicas: dict[str, int] = {}  # replica -> requests it answered here

    async def start(self) -> None:
        return None

    async def preload(self) -> None:
        return None  # replicas load their model when they start

    async def close(self) -> None:
        return None

    def readiness(self) -> Readiness:
        return Readiness(True, f"served by {self._where}")

    def describe(self) -> dict[str, Any]:
        seen = [{"replica": name, "requests": count} for name, count in sorted(self._replicas.items())]
        return {"device": self._where, "replicas_seen": seen}

    def stats(self) -> BackendStats:
        return BackendStats()  # each replica's queue is its own; Ray reports replicas' ongoing requests

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        answer = await self._calls.generate(request)
        self._replicas[answer.replica] = self._replicas.get(answer.replica, 0) + 1
        if self._observer is not None:
            for device, images, seconds in answer.batches:
                self._observer(device, images, seconds)
        if answer.error is not None:
            raise answer.error
        if answer.result is None:
            raise RuntimeError(f"replica {answer.replica} answered neither a result nor an error")
        return answer.result
