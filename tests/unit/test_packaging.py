"""Dockerfile.cuda cannot be built here (no Docker engine, no registry): check what can drift from the repo."""

from __future__ import annotations

import re
import tomllib

from tests.support.constants import REPO_ROOT

ROOT = REPO_ROOT
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


# The CUDA builds torch 2.12 and later publish (pytorch/pytorch#178665): cu130 (stable) and cu126 (legacy).
# There is no cu128 build of the pinned release, so no install path may name one.
TORCH_CUDA_BUILDS = {"cu126": "12.6", "cu130": "13.0"}
_INDEX = re.compile(r"download\.pytorch\.org/whl/(cu\d+)")


def test_the_cuda_install_names_only_torch_builds_that_exist() -> None:
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/(cu\d+)", _arg("TORCH_INDEX_URL"))
    assert index and index.group(1) == "cu130"
    base = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu24\.04", _arg("BASE_IMAGE"))
    assert base and base.group(1) == TORCH_CUDA_BUILDS["cu130"]  # the base image's CUDA matches the wheels'
    for name in ("Dockerfile.cuda", "README.md", "Makefile"):
        builds = set(_INDEX.findall((ROOT / name).read_text()))
        assert builds and builds <= set(TORCH_CUDA_BUILDS), (name, builds)


def test_the_cu126_fallback_is_documented_with_a_matching_base_image() -> None:
    fallback = re.search(r"BASE_IMAGE=nvidia/cuda:(\d+\.\d+)\.\d+-base-ubuntu24\.04 \\\n.*TORCH_INDEX_URL="
                         r"https://download\.pytorch\.org/whl/(cu\d+)", DOCKERFILE)
    assert fallback and TORCH_CUDA_BUILDS[fallback.group(2)] == fallback.group(1)
    assert "driver >= 580" in DOCKERFILE
