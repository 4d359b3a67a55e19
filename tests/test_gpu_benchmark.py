"""benchmarks/gpu_benchmark.py: refuses cleanly without CUDA; `--smoke` runs its whole code path on the CPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_benchmark.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_benchmark"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda_with_exit_code_2(bench: ModuleType, tmp_path: Path, capsys) -> None:
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_configs_are_valid_optimization_options(bench: ModuleType) -> None:
    from pipelines.device import Placement
    from pipelines.optimizations import plan_optimizations

    h100 = Placement("cuda", "bf16")
    for name, options in bench.CONFIGS.items():
        plan = plan_optimizations(options, h100, gpu_capability=(9, 0), has_package=lambda package: True)
        assert plan.switched_off == {}, name


def test_markdown_shows_speed_ups_errors_and_switched_off_options(bench: ModuleType) -> None:
    row = {"model": "flux-dev", "batch": 1, "applied": {}, "switched_off": {}}
    report = {
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13", "diffusers": "0.42.1", "torchao": None,
                    "cuda": "12.8", "compute_capability": "9.0"},
        "settings": {"size": 1024, "steps": 28, "dtype": "bf16", "repeats": 3},
        "results": [
            {**row, "config": "eager", "mean_s": 6.6, "s_per_image": 6.6, "images_per_s": 0.152},
            {**row, "config": "compile", "mean_s": 4.4, "s_per_image": 4.4, "images_per_s": 0.227,
             "tflop_per_call": 2093.2, "achieved_tflops": 475.73},
            {**row, "config": "compile-fp8", "switched_off": {"quantize": "fp8 needs torchao"}, "mean_s": 4.4,
             "s_per_image": 4.4, "images_per_s": 0.227},
            {**row, "config": "eager", "batch": 4, "error": "out of memory", "peak_memory_gib": 79.1},
        ],
    }
    markdown = bench.to_markdown(report)
    assert "# GPU benchmark: NVIDIA H100 80GB HBM3" in markdown
    assert "| flux-dev | compile | 1 | 4.400 | 4.400 | 0.227 | 1.50x | 475.7 |" in markdown
    assert "Compute floor per call at 800 TFLOP/s: flux-dev batch 1 2.62 s." in markdown
    assert "quantize off: fp8 needs torchao" in markdown
    assert "out of memory" in markdown and "compute capability 9.0" in markdown


@pytest.mark.slow
def test_smoke_run_writes_json_and_markdown(bench: ModuleType, tmp_path: Path) -> None:
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    [result] = list(tmp_path.glob("gpu-benchmark-smoke-cpu-*.json"))
    report = json.loads(result.read_text())
    assert report["smoke"] is True and report["machine"]["gpu"] is None
    assert {"torch", "diffusers", "torchao"} <= set(report["machine"]) and report["date"]
    cells = {(row["model"], row["config"], row["batch"]) for row in report["results"]}
    assert cells == {(model, "eager", batch) for model in ("flux-dev", "sd3-medium") for batch in (1, 2)}
    for row in report["results"]:
        assert row["mean_s"] > 0 and len(row["runs_s"]) == 1 and "warmup_s" in row
        assert row["achieved_tflops"] == pytest.approx(row["tflop_per_call"] / row["mean_s"], rel=0.01)
    batch_one, batch_two = (row["tflop_per_call"] for row in report["results"] if row["model"] == "flux-dev")
    assert batch_two == pytest.approx(2 * batch_one, rel=0.01)
    markdown = result.with_suffix(".md").read_text()
    assert markdown.count("| eager |") == 4 and "Compute floor per call at 800 TFLOP/s" in markdown


@pytest.mark.slow
def test_a_failing_config_is_recorded_and_the_others_still_run(bench: ModuleType, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration that raises (a torchao or diffusers API change, say) must not cost the run its numbers."""
    real_plan = bench.plan_optimizations

    def plan_breaking_fp8(options, placement):
        if options.quantize == "fp8":
            raise RuntimeError("torchao API changed")
        return real_plan(options, placement)

    monkeypatch.setattr(bench, "plan_optimizations", plan_breaking_fp8)
    args = ["--smoke", "--models", "flux-dev", "--configs", "compile-fp8", "eager", "--batch-sizes", "1",
            "--out", str(tmp_path)]
    assert bench.main(args) == 0
    [result] = list(tmp_path.glob("gpu-benchmark-smoke-cpu-*.json"))
    broken, eager = json.loads(result.read_text())["results"]
    assert broken["config"] == "compile-fp8" and broken["error"] == "failed: RuntimeError: torchao API changed"
    assert "mean_s" not in broken and eager["config"] == "eager" and eager["mean_s"] > 0
    assert "failed: RuntimeError: torchao API changed" in result.with_suffix(".md").read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_size_sd3_on_the_gpu(bench: ModuleType, tmp_path: Path) -> None:
    args = ["--models", "sd3-medium", "--configs", "eager", "--batch-sizes", "1", "--size", "512", "--steps", "2",
            "--repeats", "1", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    [result] = list(tmp_path.glob("gpu-benchmark-*.json"))
    report = json.loads(result.read_text())
    assert report["machine"]["gpu"] and report["results"][0]["peak_memory_gib"] > 3


def test_cpu_full_size_defaults_are_small_and_exclusive_with_smoke(bench: ModuleType) -> None:
    args = bench.parse_args(["--cpu"])
    assert (args.configs, args.batch_sizes, args.size, args.steps, args.repeats) == (["eager"], [1], 256, 1, 1)
    with pytest.raises(SystemExit):
        bench.parse_args(["--cpu", "--smoke"])
