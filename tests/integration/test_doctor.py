"""`imageserve doctor`: sections, reasons for what is missing, model cache sizes, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.tiny import build_tiny_model
from server.cli.doctor import human_size, model_cache_report
from server.cli.main import main
from tests.integration.test_gpu_detection import fake_nvidia_smi

SECTIONS = ("imageserve", "warnings", "torch", "nvidia_driver", "features", "packages", "compiler", "model_cache",
            "models")
no_cuda_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine whose torch sees no CUDA")


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache: Path) -> Path:
    """Settings of a fresh machine with the tiny models built, and no nvidia-smi on PATH."""
    build_tiny_model(model_cache, "tiny-flux")
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMAGESERVE_MODEL_CACHE", str(model_cache))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    return tmp_path


def doctor_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main([*args, "doctor", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_output_has_every_section(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for section in SECTIONS:
        if section != "warnings":
            assert f"[{section}]" in out
    assert "torch" in out and torch.__version__ in out


def test_json_output_has_every_section_and_versions(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = doctor_json(capsys)
    assert tuple(report) == SECTIONS
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_build"] == (torch.version.cuda or "CPU build")
    assert report["packages"]["diffusers"][0].isdigit()
    assert report["packages"]["xformers"].startswith(("not available: not installed", "0."))
    assert report["compiler"]["inductor_cache"]
    assert report["compiler"]["cxx"].startswith(("/", "not available: "))


@no_cuda_only
def test_on_a_cpu_machine_cuda_things_say_why_not(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = doctor_json(capsys)
    why = "this torch is a CPU build" if torch.version.cuda is None else "torch sees no CUDA device"
    assert report["torch"]["cuda"].startswith("not available: " + why) and report["torch"]["gpus"] == []
    for feature in ("fp8", "cudnn", "flash_attention"):
        assert report["features"][feature].startswith("not available: "), feature
    assert "no CUDA device" in report["features"]["fp8"]
    assert report["nvidia_driver"]["nvidia_smi"] == "not available: nvidia-smi is not on PATH"
    assert report["warnings"] == []


def test_switched_off_options_are_listed_with_their_reason(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = machine / "imageserve.toml"
    config.write_text('[models.tiny-flux]\ncompile = "regional"\nquantize = "fp8"\n')
    report = doctor_json(capsys, "--config", str(config))
    tiny = next(model for model in report["models"] if model["id"] == "tiny-flux")
    assert "compile=regional" in tiny["configured"] and "fp8" in tiny["configured"]
    if not torch.cuda.is_available():
        assert "compute capability >= 8.9" in tiny["switched_off"]["quantize"]
        assert "no CUDA device" in tiny["switched_off"]["quantize"]
    assert main(["doctor", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "quantize" in out and "fp8 needs a CUDA GPU" in out


def test_model_cache_lists_tiny_models_and_hub_repos_with_sizes(tmp_path: Path, model_cache: Path) -> None:
    cache = tmp_path / "cache"
    tiny = build_tiny_model(cache, "tiny-sd3")
    blob = cache / "models--black-forest-labs--FLUX.1-dev" / "blobs" / "abc"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x" * 3000)
    snapshot = cache / "models--black-forest-labs--FLUX.1-dev" / "snapshots" / "rev" / "transformer"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blob)  # the hub's layout: counted once, in blobs
    report = model_cache_report(cache)
    entries = {entry["name"]: entry for entry in report["entries"]}
    assert entries["black-forest-labs/FLUX.1-dev"]["type"] == "hub repo"
    assert entries["black-forest-labs/FLUX.1-dev"]["size_bytes"] == 3000
    tiny_bytes = sum(f.stat().st_size for f in tiny.rglob("*") if f.is_file())
    assert entries["tiny-sd3"] == {"name": "tiny-sd3", "type": "tiny model", "size_bytes": tiny_bytes,
                                   "path": str(tiny), "size": human_size(tiny_bytes)}
    assert report["total_bytes"] == tiny_bytes + 3000


def test_the_model_cache_section_lists_the_built_tiny_model(machine: Path, model_cache: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    report = doctor_json(capsys)
    names = [entry["name"] for entry in report["model_cache"]["entries"]]
    assert "tiny-flux" in names and report["model_cache"]["total_bytes"] > 0
    assert main(["doctor"]) == 0
    assert "tiny-flux" in capsys.readouterr().out


def test_a_missing_model_cache_is_not_an_error(tmp_path: Path) -> None:
    report = model_cache_report(tmp_path / "nowhere")
    assert report["entries"].startswith("not available: ") and "imageserve pull" in report["entries"]


@no_cuda_only
def test_a_gpu_box_with_cpu_torch_shows_the_driver_gpus_and_the_warning(
        machine: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    script = fake_nvidia_smi(machine / "bin")
    report = doctor_json(capsys)
    driver = report["nvidia_driver"]
    assert driver["nvidia_smi"] == str(script) and driver["driver_version"] == "580.65.06"
    assert driver["gpus"] == [{"driver_version": "580.65.06", "name": "NVIDIA H100 80GB HBM3",
                               "memory_total": "81559 MiB", "memory_free": "81000 MiB", "compute_capability": "9.0"}]
    assert len(report["warnings"]) == 1 and "NVIDIA GPU" in report["warnings"][0]
    flux = next(model for model in report["models"] if model["id"] == "flux-dev")
    assert "pip install torch==" in flux["refused"]
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: this machine has an NVIDIA GPU" in out and "NVIDIA H100 80GB HBM3" in out


def test_a_failing_nvidia_smi_is_a_reason_not_a_crash(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = machine / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                      "exit 9\n")
    script.chmod(0o755)
    driver = doctor_json(capsys)["nvidia_driver"]
    assert driver["nvidia_smi"].startswith(f"not available: {script} failed: NVIDIA-SMI has failed")
    assert driver["gpus"] == []


def test_secrets_never_appear(machine: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    secrets = {"IMAGESERVE_API_KEYS": "sk-very-secret-key-4711:pro", "HF_TOKEN": "hf_secret_token_0815",
               "IMAGESERVE_DATABASE_URL": "postgresql://user:db-password-123@localhost:5432/x",
               "IMAGESERVE_KEY_PEPPER": "pepper-secret-99", "IMAGESERVE_URL_SIGNING_KEY": "signing-secret-42"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    assert main(["doctor"]) == 0
    assert main(["doctor", "--json"]) == 0
    captured = capsys.readouterr()
    for value in ("sk-very-secret-key-4711", "hf_secret_token_0815", "db-password-123", "pepper-secret-99",
                  "signing-secret-42"):
        assert value not in captured.out and value not in captured.err
    assert '"hf_token": "set"' in captured.out


def test_bad_settings_exit_2(machine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = machine / "bad.toml"
    config.write_text('[models.tiny-flux]\nquantize = "fp4"\n')
    assert main(["doctor", "--config", str(config)]) == 2
    assert "error:" in capsys.readouterr().err
