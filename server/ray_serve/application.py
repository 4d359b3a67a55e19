"""The Serve application built from the settings: one ingress deployment, one deployment per local model.

`build(args)` is the application builder named by `deploy/ray/serve-config.yaml` (`import_path:
server.ray_serve.application:build`); its `args` are a settings source (`server.ray_serve.source`):
`{"config": "/path/imageserve.toml", "settings": {...non-secret overrides}}`. `imageserve serve --ray` builds the
same application with `build_application`.

Per model (`[models.<id>.ray]`, `server.ray_settings.RayModelSettings`): a fixed `num_replicas` (default 1) or
autoscaling between `min_replicas` and `max_replicas`, aiming at `target_ongoing_requests` per replica (default
the model's `max_batch_images`: one full batch each); `num_gpus` (default 1) and `num_cpus` per replica, and
any other Ray actor option. A replica takes at most `max_queue_images` requests at once; beyond that Serve's
router queues up to as many again, then refuses with a 503 (`server.ray_serve.handles`).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from server.ray_serve.ingress import Ingress
from server.ray_serve.replica import ModelReplica
from server.ray_serve.source import load_from_source
from server.ray_settings import RayModelSettings
from server.registry import ModelSpec, build_registry
from server.settings import Settings

logger = logging.getLogger(__name__)


def deployment_name(model_id: str) -> str:
    return f"model-{model_id}"


GPU_FREE_KINDS = frozenset({"simulated", "tiny-flux", "tiny-sd3"})  # their replicas default to num_gpus = 0


def deployed_models(settings: Settings) -> list[ModelSpec]:
    """The local models with a `[models.<id>.ray]` table: those the cluster runs."""
    return [spec for spec in build_registry(settings) if spec.is_local and settings.model_settings(spec.id).ray]


def model_deployment_options(settings: Settings, spec: ModelSpec) -> dict[str, Any]:
    """The Serve options of a local model's deployment, from its `[models.<id>.ray]` table."""
    model = settings.model_settings(spec.id)
    ray = model.ray or RayModelSettings()
    options: dict[str, Any] = {
        "name": deployment_name(spec.id),
        "ray_actor_options": ray.actor_options(0.0 if spec.kind in GPU_FREE_KINDS else 1.0),
        "max_ongoing_requests": settings.max_queue_images,
        "max_queued_requests": settings.max_queue_images,
    }
    if ray.autoscaling:
        autoscaling: dict[str, Any] = {
            "min_replicas": ray.min_replicas if ray.min_replicas is not None else 1,
            "max_replicas": ray.max_replicas,
            "target_ongoing_requests": ray.target_ongoing_requests or model.max_batch_images,
        }
        if ray.upscale_delay_s is not None:
            autoscaling["upscale_delay_s"] = ray.upscale_delay_s
        if ray.downscale_delay_s is not None:
            autoscaling["downscale_delay_s"] = ray.downscale_delay_s
        if ray.look_back_period_s is not None:
            autoscaling["look_back_period_s"] = ray.look_back_period_s
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = ray.num_replicas or 1
    return options


def shared_database_warning(settings: Settings) -> str | None:
    if settings.ray.ingress_replicas > 1 and settings.database_url is None:
        return (f"[ray] ingress_replicas = {settings.ray.ingress_replicas} with the default SQLite database: every "
                "front-end replica must see the same keys, quotas and ledger. Set IMAGESERVE_DATABASE_URL to a "
                "PostgreSQL database (SQLite only works while every replica is on one machine).")
    return None


def build_application(source: dict[str, Any]) -> Application:
    settings = load_from_source(source)
    warning = shared_database_warning(settings)
    if warning:
        logger.warning("%s", warning)
    deployed = deployed_models(settings)
    if not deployed:
        logger.warning("no local model has a [models.<id>.ray] table: only hosted models are served")
    models = {spec.id: ModelReplica.options(**model_deployment_options(settings, spec)).bind(spec.id, source)
              for spec in deployed}
    ingress = Ingress.options(name="ingress", num_replicas=settings.ray.ingress_replicas,
                              ray_actor_options={"num_cpus": settings.ray.ingress_num_cpus},
                              max_ongoing_requests=1000)
    return ingress.bind(source, models)


def build(args: dict[str, Any]) -> Application:
    """The application builder for `serve deploy` / `serve run` (see the module docstring)."""
    return build_application(dict(args))

