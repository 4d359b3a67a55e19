"""The HTTP front end as a Serve ingress deployment: `create_app` with each local model on its replicas.

Routes, auth, quotas, the ledger, vendors, encoding and storage run here exactly as in the single-process
server; only a local model's `generate` goes to its deployment (`server.backends.remote.RemoteModelBackend`
over `server.ray_serve.handles.RayReplicaCalls`). Serve builds the FastAPI app per replica, after `__init__`
(`__serve_build_asgi_app__`), and runs its lifespan (database, sweeper) as uvicorn would.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.types import BatchObserver, ImageBackend
from server.app import create_app
from server.backends.factory import UnavailableBackend
from server.backends.remote import RemoteModelBackend
from server.ray_serve.handles import RayReplicaCalls
from server.ray_serve.source import load_from_source
from server.registry import ModelSpec


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, source: dict[str, Any], models: dict[str, DeploymentHandle]) -> None:
        self.settings = load_from_source(source)
        self.models = models  # model id -> the handle of its deployment

    def _remote_backend(self, spec: ModelSpec, observer: BatchObserver | None) -> ImageBackend:
        handle = self.models.get(spec.id)
        if handle is None:
            return UnavailableBackend(spec, f"not deployed on this Ray cluster: give it a [models.{spec.id}.ray] "
                                            "table (replicas, GPUs) in the settings")
        return RemoteModelBackend(spec.id, RayReplicaCalls(spec.id, handle), observer=observer,
                                  where=f"Ray Serve deployment {handle.deployment_name}")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.settings, local_backends=self._remote_backend)
