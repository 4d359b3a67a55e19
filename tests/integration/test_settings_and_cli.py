"""Settings precedence, registry overrides, and the `models` / `pull` commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.cli.main import main
from server.registry import build_registry
from server.settings import load_settings
from tests.support.constants import REPO_ROOT

ROOT = REPO_ROOT


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_environment_wins_over_the_toml_file_which_wins_over_defaults(tmp_path: Path, monkeypatch) -> None:
    config = _write(tmp_path / "imageserve.toml", """
port = 9001
default_model = "tiny-sd3"
batch_wait_ms = 20
preload = ["tiny-flux"]
[models.flux-dev]
source = "/srv/flux"
max_batch_images = 2
price_usd = 0.01
""")
    monkeypatch.setenv("IMAGESERVE_PORT", "9100")
    monkeypatch.setenv("IMAGESERVE_PRELOAD", "tiny-sd3, tiny-flux")
    settings = load_settings(config)
    assert settings.port == 9100  # env
    assert settings.preload == ["tiny-sd3", "tiny-flux"]  # env, comma-separated
    assert settings.default_model == "tiny-sd3" and settings.batch_wait_ms == 20  # file
    assert settings.model_cache == Path("model_cache") and settings.device == "auto"  # defaults
    assert settings.model_settings("flux-dev").max_batch_images == 2
    flux = build_registry(settings).get("flux-dev")
    assert flux.source == "/srv/flux" and flux.cost(3, "1024x1024", "standard") == pytest.approx(0.03)
    assert build_registry(settings).get("dall-e-3").cost(1, "1024x1024", "hd") == pytest.approx(0.08)


def test_public_url_is_the_base_of_image_links() -> None:
    assert load_settings(host="0.0.0.0", port=8000).base_url == "http://127.0.0.1:8000"
    assert load_settings(public_url="https://img.example.com/").base_url == "https://img.example.com"


def test_typos_in_settings_are_refused(tmp_path: Path) -> None:
    config = _write(tmp_path / "bad.toml", "[models.flux-dev]\nmax_batch = 4\n")
    with pytest.raises(ValueError, match="max_batch"):
        load_settings(config)
    assert main(["--config", str(tmp_path / "missing.toml"), "models"]) == 2


def test_pull_builds_tiny_models_and_refuses_vendor_models(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("IMAGESERVE_MODEL_CACHE", str(tmp_path / "cache"))
    assert main(["pull", "tiny-flux"]) == 0
    assert (tmp_path / "cache" / "tiny" / "tiny-flux" / "model_index.json").is_file()
    assert main(["pull", "dall-e-3"]) == 2
    assert "not a local model" in capsys.readouterr().err


def test_pull_reports_an_unreachable_hub_in_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "IMAGESERVE_MODEL_CACHE": str(tmp_path / "cache")}
    completed = subprocess.run([sys.executable, "-m", "server.cli.main", "pull", "flux-dev"], capture_output=True,
                               text=True, timeout=120, env=env, cwd=ROOT)
    assert completed.returncode == 1
    assert "could not download black-forest-labs/FLUX.1-dev" in completed.stderr
    assert "Traceback" not in completed.stderr
