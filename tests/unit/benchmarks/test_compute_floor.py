"""benchmarks/compute_floor.py: the benchmark's full-size architectures are the published ones, FLOPs counted right.

Everything here runs on PyTorch's meta device (shapes only), so the full 12B FLUX.1-dev costs nothing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.architectures import ARCHITECTURES, build_pipeline
from benchmarks.compute_floor import META, count_call_flops, main

# Transformer sizes of the published checkpoints (black-forest-labs/FLUX.1-dev,
# stabilityai/stable-diffusion-3-medium-diffusers): a wrong width or depth in the benchmark changes them.
PUBLISHED_PARAMS = {"flux-dev": 11_901_408_320, "sd3-medium": 2_028_328_000}


@pytest.fixture(scope="module")
def meta_pipes() -> dict:
    return {name: build_pipeline(arch, META, tiny=False) for name, arch in ARCHITECTURES.items()}


@pytest.mark.parametrize("model", sorted(PUBLISHED_PARAMS))
def test_full_size_transformers_have_the_published_parameter_counts(meta_pipes: dict, model: str) -> None:
    flops = count_call_flops(ARCHITECTURES[model], batch=1, size=1024, steps=28, pipe=meta_pipes[model])
    assert flops.transformer_params == PUBLISHED_PARAMS[model]


def test_flux_dev_step_matches_the_published_compute_estimate(meta_pipes: dict) -> None:
    """About 74 TFLOP per 1024x1024 step, hence a floor of about 2.6 s for 28 steps at 800 TFLOP/s."""
    flops = count_call_flops(ARCHITECTURES["flux-dev"], batch=1, size=1024, steps=28, pipe=meta_pipes["flux-dev"])
    assert 73 < flops.transformer_step_tflop < 76
    assert 2.5 < flops.floor_seconds(800) < 2.7


@pytest.mark.parametrize("model", sorted(ARCHITECTURES))
def test_flops_grow_linearly_with_batch_and_with_steps(meta_pipes: dict, model: str) -> None:
    arch, pipe = ARCHITECTURES[model], meta_pipes[model]
    one = count_call_flops(arch, batch=1, size=512, steps=28, pipe=pipe)
    four = count_call_flops(arch, batch=4, size=512, steps=28, pipe=pipe)
    assert four.transformer_step_tflop == pytest.approx(4 * one.transformer_step_tflop, rel=1e-6)
    assert four.vae_decode_tflop == pytest.approx(4 * one.vae_decode_tflop, rel=1e-6)
    fewer_steps = count_call_flops(arch, batch=1, size=512, steps=14, pipe=pipe)
    assert one.call_tflop - fewer_steps.call_tflop == pytest.approx(14 * one.transformer_step_tflop)


def test_sd3_counts_the_classifier_free_guidance_pass(meta_pipes: dict) -> None:
    """SD3 runs its transformer on prompt and negative prompt: the step costs what FLUX's batch 2 would."""
    arch = ARCHITECTURES["sd3-medium"]
    assert arch.classifier_free
    with_guidance = count_call_flops(arch, batch=1, size=512, steps=28, pipe=meta_pipes["sd3-medium"])
    without = count_call_flops(replace(arch, classifier_free=False), batch=1, size=512, steps=28,
                               pipe=meta_pipes["sd3-medium"])
    assert with_guidance.transformer_step_tflop == pytest.approx(2 * without.transformer_step_tflop, rel=1e-6)


def test_script_writes_json_and_markdown(tmp_path: Path) -> None:
    assert main(["--models", "flux-dev", "--sizes", "512", "--batch-sizes", "1", "2", "--tflops", "400",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "compute-floor.json").read_text())
    assert report["settings"]["tflops"] == 400 and report["date"]
    assert [(row["model"], row["size"], row["batch"]) for row in report["results"]] == [
        ("flux-dev", 512, 1), ("flux-dev", 512, 2)]
    for row in report["results"]:
        assert row["floor_s"] == pytest.approx(row["call_tflop"] / 400)
    markdown = (tmp_path / "compute-floor.md").read_text()
    assert "| flux-dev | 11.90B | 512 | 2 | 28 |" in markdown and "Floor at 400 TFLOP/s" in markdown
