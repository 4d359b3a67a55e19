"""A `DiffusersRunner` for a tiny model, built from settings the way the server builds one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.device import choose_placement
from pipelines.loading import locate_weights
from pipelines.runner import DiffusersRunner
from server.backends.factory import local_model_options
from server.registry import build_registry
from server.settings import load_settings


def tiny_runner(model_cache: Path, model: str = "tiny-flux", *, device: str = "cpu", dtype: str = "bf16",
                **fields: Any) -> DiffusersRunner:
    """`fields` are the model's `[models.<id>]` settings (compile, fuse_qkv, warmup_sizes, ...)."""
    settings = load_settings(model_cache=model_cache, device=device, dtype=dtype, models={model: fields})
    spec = build_registry(settings).get(model)
    assert spec is not None
    location = locate_weights(spec.kind, spec.source, settings.model_cache)
    return DiffusersRunner(spec, location, local_model_options(settings, model),
                           choose_placement(settings.device, settings.dtype))
