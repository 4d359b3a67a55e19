"""Finding and loading weights: a local diffusers folder, or a hub repo in the model cache.

A request never starts a download: everything loads with `local_files_only=True`. `imageserve pull`
is the one place that downloads (`download_weights`). Real weights and the tiny models go through
the same `from_pretrained` call.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.tiny import TINY_KINDS, build_tiny_model, tiny_model_path

logger = logging.getLogger(__name__)

# Pipeline class per model kind (a registry keyed by kind, not an if/elif chain).
PIPELINE_CLASSES = {
    "sd3": "StableDiffusion3Pipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "tiny-flux": "FluxPipeline",
}


@dataclass(frozen=True)
class WeightsLocation:
    """Where `from_pretrained` should look: a folder, or a repo id plus the cache dir."""

    pretrained: str
    cache_dir: Path | None
    found: bool
    detail: str


def locate_weights(kind: str, source: str | None, model_cache: Path) -> WeightsLocation:
    """Find weights without downloading anything. Tiny kinds are always available (built on demand)."""
    if kind in TINY_KINDS and not source:
        path = tiny_model_path(model_cache, kind)
        return WeightsLocation(str(path), None, True, "random weights, built on first use")
    if not source:
        return WeightsLocation("", None, False, "no source configured")
    folder = Path(source).expanduser()
    if folder.is_dir():
        found = (folder / "model_index.json").is_file()
        detail = f"folder {folder}" if found else f"folder {folder} has no model_index.json (not diffusers layout)"
        return WeightsLocation(str(folder), None, found, detail)
    if source.startswith((".", "/", "~")):
        return WeightsLocation(source, None, False, f"folder {source} does not exist")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "model_index.json", cache_dir=str(model_cache))
    found = isinstance(cached, str)
    detail = f"hub repo {source} in {model_cache}" if found else f"hub repo {source} is not in {model_cache}"
    return WeightsLocation(source, Path(model_cache), found, detail)


# One load at a time per process: diffusers' lazy module imports and the meta-device initialisation
# inside `from_pretrained` are not thread-safe, and each model loads on its own worker thread.
_LOAD_LOCK = threading.Lock()


def load_pipeline(kind: str, location: WeightsLocation, model_cache: Path, device: str, torch_dtype: Any,
                  *, cpu_offload: bool = False) -> Any:
    """Load a diffusers pipeline onto `device` through the public `from_pretrained` API.

    With `cpu_offload` the weights stay in CPU memory and each component moves to `device` only while it
    runs (`enable_model_cpu_offload`), for cards too small to hold the whole pipeline.
    """
    with _LOAD_LOCK:
        import diffusers

        unbuilt = not (Path(location.pretrained) / "model_index.json").exists()
        if kind in TINY_KINDS and location.cache_dir is None and unbuilt:
            build_tiny_model(model_cache, kind)
        pipeline_class = getattr(diffusers, PIPELINE_CLASSES[kind])
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": torch_dtype}
        if location.cache_dir is not None:
            kwargs["cache_dir"] = str(location.cache_dir)
        pipe = pipeline_class.from_pretrained(location.pretrained, **kwargs)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def download_weights(source: str, model_cache: Path) -> Path:
    """Download a hub repo into the model cache (the hub's cache layout), with progress bars."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo_id=source,
        cache_dir=str(model_cache),
        # The diffusers layout only: repos such as FLUX.1-dev also carry single-file checkpoints at
        # their root (tens of GB) that from_pretrained never reads.
        allow_patterns=["model_index.json", "*/*"],
    )
    return Path(folder)
