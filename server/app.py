"""The FastAPI application: the services, the routers over them, one error handler, the lifespan.

`create_app(settings)` builds everything from the settings it is given; nothing happens at import. Routes
live in `server.api.*` and take what they need from `app.state`; the lifespan starts and stops a list of
components (`server.lifecycle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import SQLAlchemyError

from pipelines.errors import ImageServeError
from pipelines.types import BatchObserver, ImageBackend
from server import __version__
from server.accounts.authenticator import KeyAuthenticator
from server.accounts.database import Database
from server.accounts.keys import KeyStore
from server.accounts.ledger import UsageLedger
from server.accounts.setup import database_url, key_authenticator
from server.api import edits, files, images, models, ops, playground
from server.api import usage as usage_report
from server.api.errors import install_error_handlers
from server.api.openapi import install_openapi
from server.backends.factory import build_backend
from server.content_policy import ContentPolicy
from server.lifecycle import BackgroundTask, ClosedOnStop, Component, running
from server.media.storage import load_or_create_signing_key
from server.media.stores import build_image_store
from server.metrics import Metrics
from server.registry import ModelRegistry, ModelSpec, build_registry
from server.service import ImageService, UsageGate
from server.settings import Settings

logger = logging.getLogger(__name__)

ROUTERS = (usage_report.router, images.router, edits.router, models.router, files.router, ops.router,
           playground.router)


# Builds the backend of a local model; the default runs it in this process (`build_backend`), the Ray cluster
# mode gives one that calls the model's replicas (`server.ray_serve`).
LocalBackendFactory = Callable[[ModelSpec, BatchObserver | None], ImageBackend]


def create_app(settings: Settings, usage: UsageGate | None = None, *,
               local_backends: LocalBackendFactory | None = None) -> FastAPI:
    registry = build_registry(settings)
    if registry.get(settings.default_model) is None:
        raise ValueError(f"IMAGESERVE_DEFAULT_MODEL / default_model: there is no model '{settings.default_model}'; "
                         f"models: {', '.join(registry.ids())}")
    database = Database(database_url(settings))  # keys, quotas, ledger: SQLite in data_dir by default
    authenticator = key_authenticator(settings, KeyStore(database))
    ledger = UsageLedger(database, settings.tiers)
    metrics = Metrics()
    backends = build_backends(registry, settings, metrics, local_backends)
    signing_key = load_or_create_signing_key(
        settings.data_dir, settings.url_signing_key.get_secret_value() if settings.url_signing_key else None
    )
    store = build_image_store(settings, signing_key)  # the data dir, or S3 (IMAGESERVE_STORAGE_URL)
    policy = ContentPolicy(settings.content_policy) if settings.content_policy.enabled else None  # [content_policy]
    service = ImageService(backends, store, ledger if usage is None else usage, on_outcome=metrics.observe_outcome,
                           policy=policy)
    stale_after = settings.stale_reservation_seconds
    components: list[Component] = [
        AccountsDatabase(database, authenticator, ledger, stale_after),
        ClosedOnStop(service.close),  # its encoder threads
        *([policy] if policy is not None else []),  # its moderation service's HTTP client
        ModelBackends(backends, registry, settings.preload,
                      warmup={model_id for model_id in backends if settings.model_settings(model_id).warmup_sizes}),
        store,  # its expiry sweep
        BackgroundTask("release-stale-reservations", lambda: ledger.release_stale_forever(stale_after)),
        # IMAGESERVE_USAGE_RETENTION_DAYS: fold old ledger rows into per-day totals (ends at once when unset).
        BackgroundTask("usage-retention", lambda: ledger.retention_forever(settings.usage_retention_days)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(components):
            logger.info("%s", startup_summary(settings, service))
            yield

    # /docs and /redoc with their assets served from the fastapi-offline package: no request to a CDN, so the
    # reference works on the air-gapped hosts this server is made for.
    app = FastAPIOffline(title="imageserve", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.service = service
    app.state.backends = backends
    app.state.store = store
    app.state.authenticator = authenticator
    app.state.database = database
    app.state.ledger = ledger
    app.state.metrics = metrics
    install_error_handlers(app, metrics.observe_error)
    install_openapi(app)  # every error response documented, no 422
    for router in ROUTERS:
        app.include_router(router)
    return app


def startup_summary(settings: Settings, service: ImageService) -> str:
    """One block for the start-up log: what is ready, the default model and whether it is, where to go."""
    ready = service.ready_models()
    default = settings.default_model
    state = "ready" if default in ready else f"NOT ready: {service.backends[default].readiness().detail}"
    base = settings.base_url
    return (f"imageserve is serving on {base}\n"
            f"  ready models:  {', '.join(ready) or 'none'}\n"
            f"  default model: {default} ({state}; change it with IMAGESERVE_DEFAULT_MODEL)\n"
            f"  playground:    {base}/playground\n"
            f"  API reference: {base}/docs    OpenAI base URL: {base}/v1")


def build_backends(registry: ModelRegistry, settings: Settings, metrics: Metrics,
                   local_backends: LocalBackendFactory | None = None) -> dict[str, ImageBackend]:
    """One backend per model. Only local models run batches and keep a queue, so only they get those series."""
    backends: dict[str, ImageBackend] = {}
    for spec in registry:
        observer = metrics.batch_observer(spec.id) if spec.is_local else None
        if spec.is_local and local_backends is not None:
            backends[spec.id] = local_backends(spec, observer)
        else:
            backends[spec.id] = build_backend(spec, settings, observer=observer)
    metrics.attach({spec.id: backends[spec.id] for spec in registry if spec.is_local})
    return backends


class AccountsDatabase:
    """At start: create or migrate the database, sync the env keys, release reservations a crash left behind;
    if it cannot be opened, say so in one line. At stop: close its connections."""

    def __init__(self, database: Database, authenticator: KeyAuthenticator, ledger: UsageLedger,
                 stale_after: float) -> None:
        self.database, self.authenticator, self.ledger, self.stale_after = database, authenticator, ledger, stale_after

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.authenticator.prepare)
            await asyncio.to_thread(self.ledger.release_stale, self.stale_after)
        except SQLAlchemyError as exc:
            logger.error("cannot start: %s", self.database.describe_error(exc))
            raise

    async def stop(self) -> None:
        await asyncio.to_thread(self.database.dispose)


class ModelBackends:
    """Every model's backend: started together, the `preload` ones loaded at start, closed together."""

    def __init__(self, backends: dict[str, ImageBackend], registry: ModelRegistry, preload: Collection[str],
                 warmup: Collection[str]) -> None:
        self.backends, self.registry, self.preload, self.warmup = backends, registry, preload, warmup

    def _is_local(self, model_id: str) -> bool:
        spec = self.registry.get(model_id)
        return spec is not None and spec.is_local

    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        for model_id in self.preload:
            if not self._is_local(model_id):
                logger.warning("preload: %r is not a local model; ignored", model_id)
                continue
            try:
                await self.backends[model_id].preload()
            except ImageServeError as exc:
                logger.error("preload of %s failed: %s", model_id, exc.message)
        # Warm-up runs when a model loads; unless it is preloaded, that is at its first request, which waits.
        for model_id in self.backends:
            if self._is_local(model_id) and model_id in self.warmup and model_id not in self.preload:
                logger.warning("model %s has warmup_sizes but is not in IMAGESERVE_PRELOAD: its first request "
                               "will wait for the load and the warm-up", model_id)

    async def stop(self) -> None:
        for backend in self.backends.values():
            await backend.close()
