"""The front end's calls to a model's replicas, over a Ray Serve `DeploymentHandle`.

A replica's own errors (a full queue, a failed load, out of memory) come back inside its `ReplicaAnswer` and
reach the client unchanged. What only Ray can say is mapped here: a replica that died with the request
(`RayActorError`: killed, crashed, its node gone) is a retryable 503 (`ReplicaLost`); Serve's own back
pressure (every replica at `max_ongoing_requests` and the router's queue full) is a full queue; anything
else raised inside a replica is a bug there, logged and answered as a failed generation.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import exceptions as ray_exceptions
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from pipelines.errors import GenerationFailed, QueueFull
from pipelines.types import GenerationRequest
from server.backends.remote import ReplicaAnswer
from server.errors import ReplicaLost

logger = logging.getLogger(__name__)


class RayReplicaCalls:
    """`server.backends.remote.ReplicaCalls` over a deployment handle."""

    def __init__(self, model_id: str, handle: DeploymentHandle) -> None:
        self.model_id = model_id
        self._handle = handle

    async def generate(self, request: GenerationRequest) -> ReplicaAnswer:
        try:
            return await self._handle.generate.remote(request)
        except ray_exceptions.RayActorError:
            logger.warning("model %s: the replica running request %s died", self.model_id, request.request_id)
            raise ReplicaLost(f"The replica of model '{self.model_id}' running this request stopped; nothing was "
                              "billed. Retry: another replica takes it.") from None
        except BackPressureError:
            raise QueueFull(f"Model '{self.model_id}' is busy: every replica's queue is full. Retry in a few "
                            "seconds.", retry_after=5) from None
        except ray_exceptions.RayTaskError as exc:
            logger.error("model %s: request %s failed inside its replica: %s", self.model_id, request.request_id,
                         exc)
            raise GenerationFailed(f"Model '{self.model_id}' failed to generate this image; the error was "
                                   "logged.") from None

    async def describe(self) -> dict[str, Any]:
        return await self._handle.describe.remote()
