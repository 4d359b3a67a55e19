"""Dockerfile.cuda cannot be built here (no Docker engine, no registry): check what can drift from the repo."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile.cuda").read_text()


def _arg(name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert found, f"Dockerfile.cuda has no ARG {name}"
    return found.group(1)


def test_copied_paths_exist() -> None:
    for line in re.findall(r"^COPY (.+)$", DOCKERFILE, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source


def test_torch_and_torchao_pins_match_the_makefile_and_the_extras_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for variable, package, arg in (("TORCH", "torch", "TORCH_VERSION"), ("TORCHAO", "torchao", "TORCHAO_VERSION")):
        pin = re.search(rf"^{variable} \?= {package}==(\S+)$", makefile, re.MULTILINE)
        assert pin and _arg(arg) == pin.group(1), variable
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(_arg("EXTRAS").split(",")) <= set(extras)


def test_runs_as_a_non_root_user_with_volumes_and_a_healthcheck() -> None:
    assert re.search(r"^USER (?!root)\w+$", DOCKERFILE, re.MULTILINE)
    assert 'VOLUME ["/data", "/models"]' in DOCKERFILE
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*/health", DOCKERFILE, re.MULTILINE)
    assert "IMAGESERVE_DATA_DIR=/data" in DOCKERFILE and "IMAGESERVE_MODEL_CACHE=/models" in DOCKERFILE
