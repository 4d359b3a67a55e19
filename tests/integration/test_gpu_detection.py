"""A GPU box whose torch sees no CUDA device is said so loudly, and full-size models refuse an unasked-for CPU.

The GPU box is posed with a fake `nvidia-smi` on PATH (and, in unit tests, fake device and /proc files);
everything here checks the CPU side, so the server tests skip where torch does see CUDA.
"""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import httpx
import pytest
import torch

from pipelines.device import (
    Placement,
    choose_placement,
    cpu_refusal,
    device_warning,
    gpu_without_cuda_warning,
    nvidia_gpu_evidence,
)
from server.cli.main import main
from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
BODY = {"prompt": "x", "size": "256x256", "num_inference_steps": 1, "response_format": "b64_json"}
BIG_BODY = {"prompt": "x", "model": "big-flux", "size": "1024x1024"}  # a model of its own takes no extra params
NO_FILES = ("/nonexistent/nvidia0",)
no_cuda_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine whose torch sees no CUDA")


def fake_nvidia_smi(folder: Path) -> Path:
    """An executable `nvidia-smi` that answers the doctor's query for one H100."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho '580.65.06, NVIDIA H100 80GB HBM3, 81559 MiB, 81000 MiB, 9.0'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture
def gpu_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH starts with a folder holding a fake nvidia-smi, as on a machine with an NVIDIA driver."""
    script = fake_nvidia_smi(tmp_path / "nvidia-bin")
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    return script


@pytest.fixture
def no_gpu_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No nvidia-smi on PATH; a machine with real NVIDIA device files cannot pose as GPU-less."""
    if nvidia_gpu_evidence(path=str(tmp_path)) is not None:
        pytest.skip("this machine has NVIDIA device files")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


def flux_folder(tmp_path: Path) -> Path:
    """Weights that are "found" (a diffusers-layout folder); they need not load for these checks."""
    folder = tmp_path / "FLUX.1-dev"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    return folder


# -- detection ---------------------------------------------------------------------------------------------


def test_nothing_found_is_none(tmp_path: Path) -> None:
    assert nvidia_gpu_evidence(path=str(tmp_path), device_files=NO_FILES,
                               proc_version=str(tmp_path / "version")) is None


def test_nvidia_smi_on_path_is_evidence(tmp_path: Path) -> None:
    script = fake_nvidia_smi(tmp_path / "bin")
    evidence = nvidia_gpu_evidence(path=f"{tmp_path / 'empty'}:{script.parent}", device_files=NO_FILES,
                                   proc_version=str(tmp_path / "version"))
    assert evidence == f"nvidia-smi at {script}"


def test_a_device_file_and_the_driver_version_are_evidence(tmp_path: Path) -> None:
    device = tmp_path / "nvidia0"
    device.touch()
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.124.06  Wed Feb 26 2025\nGCC version: 12\n")
    evidence = nvidia_gpu_evidence(path=str(tmp_path / "empty"), device_files=(str(device), *NO_FILES),
                                   proc_version=str(version))
    assert evidence == f"NVIDIA driver 570.124.06 loaded; {device} exists"


def test_the_answer_follows_path_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached per PATH, not frozen at the first call (and nothing is read at import)."""
    script = fake_nvidia_smi(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    without = nvidia_gpu_evidence(device_files=NO_FILES, proc_version=str(tmp_path / "version"))
    monkeypatch.setenv("PATH", str(script.parent))
    with_smi = nvidia_gpu_evidence(device_files=NO_FILES, proc_version=str(tmp_path / "version"))
    assert without is None and with_smi == f"nvidia-smi at {script}"


@pytest.mark.parametrize(("torch_cuda", "build"), [(None, "a CPU build"), ("13.0", "built for CUDA 13.0")])
def test_the_warning_names_the_build_and_the_fix(torch_cuda: str | None, build: str) -> None:
    warning = gpu_without_cuda_warning("nvidia-smi at /usr/bin/nvidia-smi", "2.13.0+cpu", torch_cuda)
    assert "NVIDIA GPU (nvidia-smi at /usr/bin/nvidia-smi)" in warning and build in warning
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130" in warning
    assert "cu126" in warning and "older than 580" in warning and "IMAGESERVE_DEVICE=cpu" in warning


def test_only_full_size_models_on_an_unasked_for_cpu_are_refused() -> None:
    fallback = Placement("cpu", "fp32", requested="auto")
    on_gpu_box = Placement("cpu", "fp32", requested="auto", warning="this machine has an NVIDIA GPU (...)")
    assert "IMAGESERVE_DEVICE=cpu" in cpu_refusal(fallback, "flux-dev", full_size=True)
    assert "no CUDA device" in cpu_refusal(fallback, "flux-dev", full_size=True)
    assert cpu_refusal(on_gpu_box, "flux-dev", full_size=True).endswith("this machine has an NVIDIA GPU (...)")
    assert cpu_refusal(fallback, "tiny-flux", full_size=False) is None
    assert cpu_refusal(Placement("cpu", "fp32", requested="cpu"), "flux-dev", full_size=True) is None
    assert cpu_refusal(Placement("cuda", "bf16", requested="auto"), "flux-dev", full_size=True) is None


@no_cuda_only
def test_auto_on_a_gpu_box_without_cuda_torch_warns(gpu_box: Path) -> None:
    placement = choose_placement("auto", "bf16")
    assert placement.device == "cpu" and placement.cpu_fallback
    assert f"nvidia-smi at {gpu_box}" in placement.warning
    build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    assert build in placement.warning
    assert device_warning("auto") == placement.warning
    assert device_warning("cpu") is None and choose_placement("cpu", "bf16").warning == ""


# -- through the server and the CLI ------------------------------------------------------------------------


@no_cuda_only
def test_a_gpu_box_with_cpu_torch_says_so_and_refuses_full_size_models(tmp_path: Path, model_cache: Path,
                                                                       gpu_box: Path) -> None:
    models = {"big-flux": {"kind": "flux", "source": str(flux_folder(tmp_path))}}
    with running_server(data_dir=tmp_path / "data", model_cache=model_cache, api_keys=TEST_KEYS,
                        models=models) as server:
        health = httpx.get(server.base_url + "/health").json()
        assert "NVIDIA GPU" in health["device_warning"] and "download.pytorch.org/whl/cu130" in health["device_warning"]
        assert "big-flux" not in health["models_ready"] and "tiny-flux" in health["models_ready"]

        listed = {m["id"]: m for m in httpx.get(server.api_url + "/models", headers=AUTH).json()["data"]}
        assert listed["big-flux"]["device_warning"] == health["device_warning"]
        assert listed["tiny-flux"]["device_warning"] == health["device_warning"]
        assert listed["big-flux"]["ready"] is False
        assert "not run on the CPU unless asked" in listed["big-flux"]["status"]
        assert "pip install torch==" in listed["big-flux"]["status"]

        refused = httpx.post(server.api_url + "/images/generations", json=BIG_BODY,
                             headers=AUTH, timeout=60)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["type"] == "model_unavailable" and "IMAGESERVE_DEVICE=cpu" in error["message"]
        assert "pip install torch==" in error["message"]

        tiny = httpx.post(server.api_url + "/images/generations", json={**BODY, "model": "tiny-flux"},
                          headers=AUTH, timeout=120)
        assert tiny.status_code == 200, tiny.text


@no_cuda_only
def test_without_a_gpu_full_size_models_refuse_the_cpu_and_health_has_no_warning(
        tmp_path: Path, model_cache: Path, no_gpu_box: None) -> None:
    models = {"big-flux": {"kind": "flux", "source": str(flux_folder(tmp_path))}}
    with running_server(data_dir=tmp_path / "data", model_cache=model_cache, api_keys=TEST_KEYS,
                        models=models) as server:
        assert httpx.get(server.base_url + "/health").json()["device_warning"] is None
        big = httpx.get(server.api_url + "/models/big-flux", headers=AUTH).json()
        assert big["ready"] is False and big["device_warning"] is None
        assert "torch sees no CUDA device" in big["status"] and "IMAGESERVE_DEVICE=cpu" in big["status"]
        refused = httpx.post(server.api_url + "/images/generations", json=BIG_BODY,
                             headers=AUTH, timeout=60)
        assert refused.status_code == 503 and "IMAGESERVE_DEVICE=cpu" in refused.json()["error"]["message"]


@no_cuda_only
def test_device_cpu_lets_a_full_size_model_past_the_refusal(tmp_path: Path, model_cache: Path,
                                                            gpu_box: Path) -> None:
    models = {"big-flux": {"kind": "flux", "source": str(flux_folder(tmp_path))}}
    with running_server(data_dir=tmp_path / "data", model_cache=model_cache, api_keys=TEST_KEYS, device="cpu",
                        models=models) as server:
        assert httpx.get(server.base_url + "/health").json()["device_warning"] is None
        big = httpx.get(server.api_url + "/models/big-flux", headers=AUTH).json()
        assert big["ready"] is True and "not run on the CPU" not in big["status"]
        assert big["device"] == "cpu" and big["device_warning"] is None


@no_cuda_only
def test_models_command_and_serve_banner_show_the_warning(tmp_path: Path, gpu_box: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import uvicorn

    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGESERVE_MODEL_CACHE", str(tmp_path / "cache"))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: this machine has an NVIDIA GPU" in out and out.count("WARNING:") == 1

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append(app))
    with caplog.at_level(logging.WARNING):
        assert main(["serve"]) == 0
    assert served and "GPU PRESENT BUT TORCH SEES NO CUDA DEVICE" in caplog.text
    assert "IMAGESERVE_DEVICE=cpu" in caplog.text
