"""benchmarks/gpu_benchmark.py: refuses cleanly without CUDA; `--smoke` runs its whole code path on the CPU;
the lease preset, its deadline and the environment probe."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from benchmarks import environment_probe
from benchmarks.lease import LEASE_JOBS, Deadline, skip_reason
from tests.support.constants import REPO_ROOT

ROOT = REPO_ROOT
SCRIPT = ROOT / "benchmarks" / "gpu_benchmark.py"
LEASE_ORDER = [("flux-dev", "eager"), ("flux-dev", "suggested"), ("flux-dev", "suggested+cudnn"),
               ("sd3-medium", "eager"), ("sd3-medium", "suggested")]


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


# -- the lease preset --------------------------------------------------------------------------------------


def test_lease_preset_defaults_and_fixed_plan(bench: ModuleType) -> None:
    args = bench.parse_args(["--preset", "lease"])
    assert (args.batch_sizes, args.size, args.steps, args.repeats, args.deadline_s) == ([1], 1024, 28, 2, 480)
    assert [(job.model, job.config) for job in bench.plan_jobs(args)] == LEASE_ORDER
    smoke = bench.parse_args(["--preset", "lease", "--smoke", "--deadline-s", "60"])
    assert (smoke.batch_sizes, smoke.size, smoke.steps, smoke.repeats, smoke.deadline_s) == ([1], 128, 2, 1, 60)
    with pytest.raises(SystemExit):
        bench.parse_args(["--preset", "lease", "--models", "flux-dev"])


def test_lease_configs_apply_fully_on_a_hopper_gpu() -> None:
    """On an H100/H200 with torchao, nothing of the suggested profile may switch itself off."""
    from pipelines.device import Placement
    from pipelines.optimizations import plan_optimizations

    for job in LEASE_JOBS:
        plan = plan_optimizations(job.options, Placement("cuda", "bf16"), gpu_capability=(9, 0),
                                  has_package=lambda package: True)
        assert plan.switched_off == {}, job
    suggested = {job.config: job.options for job in LEASE_JOBS if job.model == "flux-dev"}
    assert suggested["suggested"].compile == "regional" and suggested["suggested"].quantize == "fp8"
    assert suggested["suggested"].fuse_qkv and suggested["suggested"].channels_last_vae
    assert suggested["suggested+cudnn"].attention_backend == "native_cudnn"


@pytest.mark.slow
def test_lease_preset_smoke_runs_all_five_configs_in_order(bench: ModuleType, tmp_path: Path) -> None:
    assert bench.main(["--preset", "lease", "--smoke", "--out", str(tmp_path)]) == 0
    [result] = list(tmp_path.glob("gpu-benchmark-lease-smoke-cpu-*.json"))
    report = json.loads(result.read_text())
    assert report["preset"] == "lease" and report["settings"]["deadline_s"] == 480
    assert [(row["model"], row["config"]) for row in report["results"]] == LEASE_ORDER
    environment = report["environment"]
    assert environment["ok"] and environment["packages"]["torch"] == torch.__version__
    assert any("no CUDA device" in warning for warning in environment["warnings"])  # reported, not fatal
    has_torchao = importlib.util.find_spec("torchao") is not None
    for row in report["results"]:
        if "fp8" in row["requested"] and not has_torchao:
            assert row["skipped"] == "torchao not installed"
            continue
        assert "skipped" not in row and "error" not in row, row
        assert row["applied"]["dtype"].startswith("fp32") and row["mean_s"] > 0 and "config_s" in row
        if "fp8" in row["requested"]:
            assert "CUDA" in row["switched_off"]["quantize"] and "smoke run" in row["switched_off"]["compile"]
    cudnn = report["results"][2]
    assert "native_cudnn needs CUDA" in cudnn["switched_off"]["attention_backend"]
    markdown = result.with_suffix(".md").read_text()
    assert "| flux-dev | **suggested+cudnn** |" in markdown and "6.6 (bf16 eager)" in markdown
    assert "n/a (not 1024 px, 28 steps)" in markdown  # smoke numbers are not compared with the anchors


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_deadline_records_the_remaining_configs_as_skipped(bench: ModuleType, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    timed: list[str] = []

    def fake_time_config(arch: Any, config: str, placement: Any, *, batch_sizes: list[int], **_: Any) -> list:
        timed.append(config)
        clock.now += 100  # each configuration "takes" 100 s
        return [{"model": arch.name, "config": config, "batch": batch, "applied": {"dtype": "fp32"},
                 "switched_off": {}, "mean_s": 1.0, "s_per_image": 1.0, "images_per_s": 1.0}
                for batch in batch_sizes]

    monkeypatch.setattr(bench, "time_config", fake_time_config)
    args = ["--preset", "lease", "--smoke", "--deadline-s", "150", "--out", str(tmp_path)]
    assert bench.main(args, clock=clock) == 0
    assert timed == ["eager", "suggested"]  # started at 0 s and 100 s; the third would start at 200 s
    [result] = list(tmp_path.glob("gpu-benchmark-lease-*.json"))
    rows = json.loads(result.read_text())["results"]
    assert [(row["model"], row["config"]) for row in rows] == LEASE_ORDER
    assert [row["config_s"] for row in rows[:2]] == [100, 100]
    for row in rows[2:]:
        assert row["skipped"] == "deadline: 200 s elapsed of 150 s" and "mean_s" not in row
    assert "skipped: deadline: 200 s elapsed of 150 s" in result.with_suffix(".md").read_text()


def test_a_deadline_of_zero_skips_everything(bench: ModuleType, tmp_path: Path) -> None:
    args = ["--preset", "lease", "--smoke", "--deadline-s", "0", "--out", str(tmp_path)]
    assert bench.main(args, clock=FakeClock()) == 0
    [result] = list(tmp_path.glob("gpu-benchmark-lease-*.json"))
    assert [row["skipped"] for row in json.loads(result.read_text())["results"]] == ["deadline: 0 s elapsed of 0 s"] * 5


def test_the_guard_counts_the_estimate_on_a_gpu_and_torchao_only_for_fp8() -> None:
    eager, suggested = LEASE_JOBS[0], LEASE_JOBS[1]
    at_400_s = Deadline(480, clock=lambda: 400.0, started=0.0)
    assert skip_reason(eager, has_torchao=True, deadline=at_400_s, on_gpu=True) is None  # 40 s expected fits
    reason = skip_reason(suggested, has_torchao=True, deadline=at_400_s, on_gpu=True)
    assert reason == "deadline: 400 s elapsed + about 150 s expected would pass 480 s"
    assert skip_reason(suggested, has_torchao=True, deadline=at_400_s, on_gpu=False) is None  # smoke: no estimate
    assert skip_reason(suggested, has_torchao=False, deadline=at_400_s, on_gpu=True) == "torchao not installed"
    assert skip_reason(eager, has_torchao=False, deadline=Deadline(None, time_never, 0.0), on_gpu=True) is None


def time_never() -> float:
    raise AssertionError("no deadline: the clock is not read")


def test_lease_markdown_puts_each_row_beside_its_anchor_and_the_floor(bench: ModuleType) -> None:
    row = {"batch": 1, "applied": {"dtype": "bf16"}, "switched_off": {}, "tflop_per_call": 2093.2}
    report = {
        "date": "2026-01-01T00:00:00+00:00", "preset": "lease",
        "machine": {"gpu": "NVIDIA H200", "torch": "2.11.0", "diffusers": "0.42.1", "torchao": "0.18.0",
                    "cuda": "13.0", "compute_capability": "9.0", "driver": "580.159.03", "cudnn": "9.10.2"},
        "settings": {"size": 1024, "steps": 28, "dtype": "bf16", "repeats": 2, "deadline_s": 480},
        "results": [
            {**row, "model": "flux-dev", "config": "eager", "label": "eager", "anchor": "bf16 eager",
             "mean_s": 6.0, "s_per_image": 6.0, "warmup_s": 7.0, "config_s": 30},
            {**row, "model": "flux-dev", "config": "suggested", "label": "compiled",
             "anchor": "compile + fp8 + fused QKV", "mean_s": 3.3, "s_per_image": 3.3, "achieved_tflops": 634.3},
            {**row, "model": "sd3-medium", "config": "suggested", "tflop_per_call": 509.0,
             "skipped": "torchao not installed"},
        ],
    }
    markdown = bench.to_markdown(report)
    assert "# GPU benchmark, lease preset: NVIDIA H200" in markdown and "driver 580.159.03, cuDNN 9.10.2" in markdown
    assert "| published H100 s (FLUX.1-dev) | speed vs published | floor s at 800 TFLOP/s | x floor |" in markdown
    assert "| flux-dev | **eager** | eager | 6.000 | 6.6 (bf16 eager) | 1.10x | 2.62 | 2.29x | 1.00x |" in markdown
    assert ("| flux-dev | **suggested** | compiled | 3.300 | 3.0 (compile + fp8 + fused QKV) | 0.91x | 2.62 | 1.26x | "
            "1.82x | 634.3 |") in markdown
    assert "| sd3-medium | **suggested** |  | - | - | - | 0.64 |" in markdown
    assert "skipped: torchao not installed" in markdown and "compile 4.2 s" in markdown


# -- the environment probe ----------------------------------------------------------------------------------


def importing_all_but(*broken: str):
    def import_module(name: str) -> ModuleType:
        if name in broken:
            raise ImportError(f"No module named '{name}'")
        return importlib.import_module(name)

    return import_module


def test_the_probe_names_a_missing_package_and_exits_with_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert environment_probe.main(["--no-cuda"], import_module=importing_all_but("diffusers")) == 2
    captured = capsys.readouterr()
    assert "diffusers is not importable (ImportError: No module named 'diffusers')" in captured.err
    assert "diffusers MISSING" in captured.out


def test_without_torchao_the_probe_only_warns_and_the_fp8_configs_are_skipped(bench: ModuleType, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment_probe.probe(require_cuda=False, import_module=importing_all_but("torchao"))
    assert env.ok and env.packages["torchao"] is None
    assert any(warning.startswith("torchao is not importable") for warning in env.warnings)
    monkeypatch.setattr(bench, "probe", lambda require_cuda: env)
    monkeypatch.setattr(bench, "time_config", lambda arch, config, placement, *, batch_sizes, **_: [
        {"model": arch.name, "config": config, "batch": 1, "applied": {}, "switched_off": {}}])
    assert bench.main(["--preset", "lease", "--smoke", "--out", str(tmp_path)]) == 0
    [result] = list(tmp_path.glob("gpu-benchmark-lease-*.json"))
    report = json.loads(result.read_text())
    skipped = [row["config"] for row in report["results"] if row.get("skipped") == "torchao not installed"]
    assert skipped == ["suggested", "suggested+cudnn", "suggested"] and report["machine"]["torchao"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_probe_and_the_lease_preset_refuse_without_cuda(bench: ModuleType, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert environment_probe.main([]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err
    assert bench.main(["--preset", "lease", "--out", str(tmp_path)]) == 2
    assert "sees no CUDA device" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_the_probe_reads_the_driver_from_nvidia_smi_and_survives_a_hang() -> None:
    def answering(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        assert kwargs["timeout"] <= 5
        return subprocess.CompletedProcess(command, 0, stdout="NVIDIA H200, 580.159.03, 143771, 143000\n", stderr="")

    def hanging(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    def which(name: str) -> str | None:
        return None if name in ("gcc", "cc", "clang") else f"/usr/bin/{name}"

    env = environment_probe.probe(require_cuda=False, run=answering, which=which)
    assert env.cuda["driver"] == "580.159.03" and env.compilers["cc"] is None
    hung = environment_probe.probe(require_cuda=False, run=hanging, which=which)
    assert "driver" not in hung.cuda and hung.cuda["nvidia_smi"].startswith("failed: TimeoutExpired")


def test_lease_sh_stops_after_a_failed_probe_and_keeps_its_output(tmp_path: Path) -> None:
    """On a machine without CUDA the probe fails, so the script runs nothing else and says why."""
    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    script = ROOT / "benchmarks" / "lease.sh"
    assert subprocess.run(["bash", str(script)], capture_output=True, env={"PATH": "/usr/bin:/bin"}).returncode == 2
    done = subprocess.run(["bash", str(script), str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "WHEELS": str(tmp_path / "none")})
    assert done.returncode == 2, done.stdout + done.stderr
    assert (tmp_path / "exit-codes.txt").read_text() == "probe 2\n"
    assert json.loads((tmp_path / "environment.json").read_text())["ok"] is False
    assert "sees no CUDA device" in (tmp_path / "probe.log").read_text()
    assert not list(tmp_path.glob("gpu-benchmark-*"))
