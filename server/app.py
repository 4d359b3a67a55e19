"""The FastAPI application: thin routes over `ImageService`, one error handler, the lifespan.

`create_app(settings)` builds everything from the settings it is given; nothing happens at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from pipelines.device import device_warning
from pipelines.errors import ImageServeError
from pipelines.types import ImageBackend
from server import __version__
from server.accounts.credentials import Principal
from server.accounts.database import Database
from server.accounts.keys import KeyAuthenticator, KeyStore
from server.accounts.ledger import UsageLedger
from server.api.errors import REQUEST_ID_HEADER, install_error_handlers
from server.api.protocol import ImageGenerationBody, parse_body
from server.api.usage import build_usage_router
from server.backends.factory import build_backend
from server.errors import ClientClosedRequest, NotFound
from server.media.storage import ImageStore, load_or_create_signing_key
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.service import ImageService, UsageGate
from server.settings import Settings

logger = logging.getLogger(__name__)

def build_registry(settings: Settings) -> ModelRegistry:
    return ModelRegistry.from_overrides({mid: ms.registry_fields() for mid, ms in settings.models.items()})


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away. The body has been read, so the next message is a disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(request: Request, work: Any) -> Any:
    """Run `work`; if the client disconnects first, cancel it (dropping its queued jobs)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is cancelled (shutdown): take the work with it
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientDisconnected()
    return task.result()


class ClientDisconnected(Exception):
    pass


def create_app(settings: Settings, usage: UsageGate | None = None) -> FastAPI:
    registry = build_registry(settings)
    if registry.get(settings.default_model) is None:
        raise ValueError(f"IMAGESERVE_DEFAULT_MODEL / default_model: there is no model '{settings.default_model}'; "
                         f"models: {', '.join(registry.ids())}")
    database = Database.from_settings(settings)  # keys, quotas, ledger: SQLite in data_dir by default
    authenticator = KeyAuthenticator.from_settings(settings, KeyStore(database))
    ledger = UsageLedger(database, settings.tiers)
    if usage is None:
        usage = ledger
    backends: dict[str, ImageBackend] = {spec.id: build_backend(spec, settings) for spec in registry}
    signing_key = load_or_create_signing_key(
        settings.data_dir, settings.url_signing_key.get_secret_value() if settings.url_signing_key else None
    )
    store = ImageStore(settings.data_dir / "images", signing_key, settings.base_url, settings.url_ttl_seconds)
    metrics = Metrics()
    metrics.attach(backends)
    service = ImageService(registry, backends, store, settings.default_model, usage,
                           on_outcome=metrics.observe_outcome)

    async def _open_database() -> None:
        """Create or migrate the database and sync the env keys; if it cannot be opened, say so in one line."""
        try:
            await asyncio.to_thread(authenticator.prepare)
            await asyncio.to_thread(ledger.release_stale, settings.stale_reservation_seconds)
        except SQLAlchemyError as exc:
            logger.error("cannot start: %s", database.describe_error(exc))
            raise

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _open_database()
        for backend in backends.values():
            await backend.start()
        for model_id in settings.preload:
            backend = backends.get(model_id)
            preload = getattr(backend, "preload", None)
            if preload is None:
                logger.warning("preload: %r is not a local model; ignored", model_id)
                continue
            try:
                await preload()
            except ImageServeError as exc:
                logger.error("preload of %s failed: %s", model_id, exc.message)
        _warn_about_warmup_without_preload(settings, backends)
        sweeper = asyncio.create_task(_sweep_expired(store, settings.cleanup_interval_seconds))
        releaser = asyncio.create_task(ledger.release_stale_forever(settings.stale_reservation_seconds))
        try:
            yield
        finally:
            sweeper.cancel()
            releaser.cancel()
            for backend in backends.values():
                await backend.close()
            service.close()
            await asyncio.to_thread(database.dispose)

    app = FastAPI(title="imageserve", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.backends = backends
    app.state.store = store
    app.state.authenticator = authenticator
    app.state.database = database
    app.state.metrics = metrics

    install_error_handlers(app, metrics.observe_error)

    async def authenticate(request: Request) -> Principal:
        client_ip = request.client.host if request.client else None
        return await authenticator.authenticate(request.headers.get("authorization"), client_ip)

    app.include_router(build_usage_router(authenticate, ledger))

    # The body is parsed by hand (our 400s, never FastAPI's 422), so its schema is given to OpenAPI here.
    @app.post("/v1/images/generations", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": ImageGenerationBody.model_json_schema()}},
    }})
    async def generate_images(request: Request) -> Any:
        request_id = f"req_img_{secrets.token_hex(12)}"
        request.state.request_id = request_id
        principal = await authenticate(request)
        body = parse_body(await request.body())
        try:
            # Image links use IMAGESERVE_PUBLIC_URL, else the address this client reached us at: a server
            # listening on 0.0.0.0 (e.g. in Docker) must not hand out links to 127.0.0.1.
            link_base = settings.public_url or str(request.base_url)
            work = service.generate(body, principal, request_id, link_base)
            payload = await run_unless_disconnected(request, work)
        except ClientDisconnected:
            logger.info("%s: client disconnected; its work was cancelled", request_id)
            raise ClientClosedRequest("The client closed the connection; its work was cancelled.") from None
        # A response with several base64 images is megabytes of JSON: render it off the event loop.
        rendered = await asyncio.to_thread(_render_json, payload)
        return Response(rendered, media_type="application/json", headers={REQUEST_ID_HEADER: request_id})

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        await authenticate(request)
        return {"object": "list", "data": [_model_entry(spec_id) for spec_id in registry.ids()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request) -> dict[str, Any]:
        await authenticate(request)
        if registry.get(model_id) is None:
            raise NotFound(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
        return _model_entry(model_id)

    def _model_entry(model_id: str) -> dict[str, Any]:
        spec = registry.get(model_id)
        assert spec is not None
        readiness = backends[model_id].readiness()
        entry: dict[str, Any] = {
            "id": spec.id,
            "object": "model",
            "created": 0,
            "owned_by": spec.provider if spec.provider != "local" else "imageserve",
            "provider": spec.provider,
            "local": spec.is_local,
            "description": spec.description,
            "sizes": list(spec.sizes) + (["custom"] if spec.custom_sizes else []),
            "max_images": spec.max_images,
            "price_usd_per_image": spec.price_usd,
            "qualities": list(spec.qualities),
            "styles": list(spec.styles),
            "extra_params": sorted(spec.extra_params),
            "ready": readiness.ready,
            "status": readiness.detail,
        }
        if spec.price_hd_usd is not None:
            entry["price_usd_per_image_hd"] = spec.price_hd_usd
        if spec.price_by_size:
            entry["price_usd_by_size"] = dict(spec.price_by_size)
        describe = getattr(backends[model_id], "describe", None)
        if describe is not None:
            entry.update(describe())
        return entry

    @app.get("/v1/images/files/{name}")
    async def image_file(name: str, expires: str | None = None, sig: str | None = None) -> FileResponse:
        path, media_type = store.open(name, expires, sig)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=300"})

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        ready = [model_id for model_id, backend in backends.items() if backend.readiness().ready]
        # Off the loop: the first call imports torch to ask about CUDA. None when all is well; else a
        # GPU box whose torch sees no CUDA device, with the fix.
        warning = await asyncio.to_thread(device_warning, settings.device)
        return {"status": "ok", "version": __version__, "models_ready": ready, "device_warning": warning}

    return app


def _render_json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _warn_about_warmup_without_preload(settings: Settings, backends: dict[str, Any]) -> None:
    """Warm-up runs when a model loads; unless it is preloaded, that is at its first request, which waits."""
    for model_id, backend in backends.items():
        if getattr(backend, "preload", None) is None or model_id in settings.preload:
            continue
        if settings.model_settings(model_id).warmup_sizes:
            logger.warning("model %s has warmup_sizes but is not in IMAGESERVE_PRELOAD: its first request will "
                           "wait for the load and the warm-up", model_id)


async def _sweep_expired(store: ImageStore, interval: float) -> None:
    while True:
        try:
            await asyncio.to_thread(store.delete_expired)
        except OSError as exc:
            logger.warning("could not sweep expired images: %s", exc)
        await asyncio.sleep(interval)
