"""Settings of the Ray Serve cluster mode (`imageserve serve --ray`): `[ray]` and `[models.<id>.ray]`.

A local model runs on the cluster when it has a `[models.<id>.ray]` table (an empty one takes the defaults);
other local models answer 503 there, so nothing reserves a GPU by accident.

Only read when serving on Ray; the single-process server ignores them. Fields Ray understands that are not
named here (`memory`, `accelerator_type`, `resources`, `runtime_env`, ...) may be given in
`[models.<id>.ray]` too: they are passed to Ray as actor options, and Ray checks them when it deploys.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Errors name the field, never echo the value; extra fields are Ray actor options, passed through.
RAY_MODEL_CONFIG = ConfigDict(extra="allow", hide_input_in_errors=True, allow_inf_nan=False)
# Ray actor options that are ours to set (from the fields below) or would break a replica.
RESERVED_ACTOR_OPTIONS = frozenset({"num_gpus", "num_cpus", "name", "namespace", "lifetime", "max_restarts"})


class RayModelSettings(BaseModel):
    """`[models.<id>.ray]`: how many replicas of a local model run on the cluster, and on what."""

    model_config = RAY_MODEL_CONFIG

    num_replicas: int | None = Field(default=None, ge=1, le=1024)  # a fixed count; default 1
    min_replicas: int | None = Field(default=None, ge=0, le=1024)  # autoscaling between these two
    max_replicas: int | None = Field(default=None, ge=1, le=1024)
    # Autoscaling: the ongoing requests per replica Ray aims for; default the model's max_batch_images (one
    # full batch per replica; more queued means a replica's queue is growing).
    target_ongoing_requests: float | None = Field(default=None, gt=0)
    upscale_delay_s: float | None = Field(default=None, ge=0)
    downscale_delay_s: float | None = Field(default=None, ge=0)
    look_back_period_s: float | None = Field(default=None, gt=0)  # the window Ray averages the load over
    # GPUs per replica; default 1, and 0 for simulated and tiny models (which run anywhere).
    num_gpus: float | None = Field(default=None, ge=0)
    num_cpus: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _check_counts(self) -> RayModelSettings:
        autoscaling = self.min_replicas is not None or self.max_replicas is not None
        if autoscaling and self.num_replicas is not None:
            raise ValueError("set num_replicas (a fixed count) or min_replicas / max_replicas (autoscaling), "
                             "not both")
        if autoscaling and self.max_replicas is None:
            raise ValueError("autoscaling needs max_replicas")
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not be above max_replicas")
        reserved = RESERVED_ACTOR_OPTIONS & set(self.model_extra or {})
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))}: not a Ray actor option that can be set here")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.max_replicas is not None

    def actor_options(self, default_gpus: float) -> dict[str, Any]:
        """Ray actor options of one replica: its GPUs and CPUs plus whatever else was given."""
        gpus = default_gpus if self.num_gpus is None else self.num_gpus
        return {**(self.model_extra or {}), "num_gpus": gpus, "num_cpus": self.num_cpus}


class RaySettings(BaseModel):
    """`[ray]`: the HTTP front end (ingress) deployment."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False)

    ingress_replicas: int = Field(default=1, ge=1, le=256)  # more than one needs a shared database
    ingress_num_cpus: float = Field(default=1.0, ge=0)
    app_name: str = Field(default="imageserve", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
