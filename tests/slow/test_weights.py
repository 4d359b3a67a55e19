"""The real-weights path: a diffusers folder or a hub-cache repo as a model's `source`.

Both load through the same `from_pretrained(..., local_files_only=True)` call as the real FLUX.1-dev
and SD3 weights; the tiny models stand in for them because nothing can be downloaded here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from pipelines.loading import locate_weights
from pipelines.tiny import build_tiny_model
from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
BODY = {"prompt": "x", "size": "256x256", "num_inference_steps": 1, "response_format": "b64_json"}


def _hub_cache_layout(model_cache: Path, repo_id: str, folder: Path) -> None:
    """Lay a diffusers folder out as huggingface_hub's cache does: models--org--name/snapshots/<rev>."""
    repo_dir = model_cache / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)


def test_a_diffusers_folder_as_source_is_served(tmp_path: Path, model_cache: Path) -> None:
    folder = tmp_path / "my-flux"
    shutil.copytree(build_tiny_model(model_cache, "tiny-flux"), folder)
    # device="cpu": a full-size kind (here flux) runs on the CPU only when asked (see test_gpu_detection.py).
    with running_server(data_dir=tmp_path / "data", model_cache=tmp_path / "empty-cache", api_keys=TEST_KEYS,
                        device="cpu", models={"flux-dev": {"source": str(folder), "default_steps": 1}}) as server:
        listed = httpx.get(server.api_url + "/models/flux-dev", headers=AUTH).json()
        assert listed["ready"] is True and str(folder) in listed["status"]
        response = httpx.post(server.api_url + "/images/generations", json={**BODY, "model": "flux-dev"},
                              headers=AUTH, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["perf"]["model_used"] == "flux-dev"
        assert response.json()["perf"]["cost_usd"] == 0.025


def test_a_hub_repo_in_the_model_cache_is_served(tmp_path: Path, model_cache: Path) -> None:
    cache = tmp_path / "cache"
    _hub_cache_layout(cache, "stabilityai/stable-diffusion-3-medium-diffusers",
                      build_tiny_model(model_cache, "tiny-sd3"))
    location = locate_weights("sd3", "stabilityai/stable-diffusion-3-medium-diffusers", cache)
    assert location.found and location.cache_dir == cache
    with running_server(data_dir=tmp_path / "data", model_cache=cache, api_keys=TEST_KEY, device="cpu") as server:
        response = httpx.post(server.api_url + "/images/generations",
                              json={**BODY, "model": "stable-diffusion-3", "n": 2}, headers=AUTH, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["perf"]["cost_usd"] == pytest.approx(0.07)


def test_missing_weights_are_not_ready_and_answer_503_naming_the_pull_command(tmp_path: Path) -> None:
    with running_server(data_dir=tmp_path / "data", model_cache=tmp_path / "cache", api_keys=TEST_KEY) as server:
        response = httpx.post(server.api_url + "/images/generations", json={**BODY, "model": "flux-dev"},
                              headers=AUTH, timeout=30)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["type"] == "model_unavailable" and "imageserve pull flux-dev" in error["message"]
        assert not any(p.name.startswith("models--") for p in (tmp_path / "cache").glob("*"))  # no download


def test_a_folder_that_is_not_diffusers_layout_is_reported(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    location = locate_weights("flux", str(tmp_path / "weights"), tmp_path)
    assert not location.found and "model_index.json" in location.detail


def test_models_loading_on_their_own_worker_threads_at_once_do_not_race(model_cache: Path) -> None:
    """Each model loads on its own worker thread; concurrent first requests must not corrupt the loads."""
    import threading

    import torch

    from pipelines.loading import load_pipeline

    errors: list[str] = []

    def load(kind: str) -> None:
        try:
            load_pipeline(kind, locate_weights(kind, None, model_cache), model_cache, "cpu", torch.float32)
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=load, args=(kind,)) for kind in ("tiny-flux", "tiny-sd3") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
