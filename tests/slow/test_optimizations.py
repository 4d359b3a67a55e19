"""Per-model optimizations: settings checks, what switches off without CUDA, each option on the tiny models,
and out of device memory through a real server (batch split, then 503 for one image)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
import typing
from pathlib import Path

import httpx
import numpy as np
import pydantic
import pytest
import torch

from pipelines.device import Placement, device_lock
from pipelines.memory import is_out_of_memory
from pipelines.optimizations import (
    ATTENTION_BACKENDS,
    AppliedOptimizations,
    OptimizationOptions,
    OptimizationPlan,
    apply_optimizations,
    is_compile_failure,
    plan_optimizations,
    warm_up,
)
from pipelines.optimizations.plan import AttentionBackendName
from pipelines.runner import DiffusersRunner, ModelLoadError
from pipelines.scheduler import BatchKey, ImageJobSpec
from server.settings import ModelSettings, load_settings
from tests.support.constants import TEST_KEY
from tests.support.runners import tiny_runner
from tests.support.server_harness import running_server

CPU = Placement("cpu", "fp32", reason="no CUDA device; CPU runs fp32")
CUDA = Placement("cuda", "bf16")


# -- settings ----------------------------------------------------------------------------------------


def test_attention_backend_names_match_the_settings() -> None:
    assert set(typing.get_args(AttentionBackendName)) == set(ATTENTION_BACKENDS)


@pytest.mark.parametrize(("fields", "message"), [
    ({"quantize": "fp8"}, "needs compile"),
    ({"warmup_sizes": ["1024"]}, "must look like '1024x1024'"),
    ({"warmup_sizes": ["1000x1000"]}, "multiples of 16"),
    ({"attention_backend": "flash_hub"}, "attention_backend"),
    ({"compile": "yes"}, "compile"),
    ({"warmup_steps": 0}, "warmup_steps"),
])
def test_wrong_settings_are_rejected_when_the_settings_load(fields: dict, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        load_settings(models={"tiny-flux": fields})


def test_optimization_fields_are_not_registry_fields() -> None:
    settings = ModelSettings(compile="regional", quantize="fp8", warmup_sizes=["512x512"], fuse_qkv=True)
    assert settings.registry_fields() == {}


# -- what applies where ------------------------------------------------------------------------------

EVERYTHING = OptimizationOptions(attention_backend="native_cudnn", compile="regional", fuse_qkv=True,
                                 quantize="fp8", channels_last_vae=True, vae_tiling=True, cpu_offload=True)


def test_plan_on_cpu_switches_off_what_needs_cuda() -> None:
    plan = plan_optimizations(EVERYTHING, CPU, cxx_compiler=lambda: "/usr/bin/g++")
    assert set(plan.switched_off) == {"attention_backend", "cpu_offload", "quantize"}
    assert "needs CUDA" in plan.switched_off["attention_backend"]
    assert "no CUDA device" in plan.switched_off["quantize"]
    options = plan.options
    assert (options.attention_backend, options.quantize, options.cpu_offload) == ("native", "none", False)
    assert (options.compile, options.fuse_qkv, options.channels_last_vae, options.vae_tiling) == (
        "regional", True, True, True)


def test_plan_on_cpu_without_a_compiler_switches_compile_off() -> None:
    options = OptimizationOptions(compile="regional")
    plan = plan_optimizations(options, CPU, cxx_compiler=lambda: None)
    assert plan.options.compile == "off"
    assert "C++ compiler" in plan.switched_off["compile"]


@pytest.mark.parametrize(("capability", "packages", "offload", "reason"), [
    ((8, 0), {"torchao"}, False, "this GPU has 8.0"),
    ((9, 0), set(), False, "install the 'gpu' extra"),
    ((9, 0), {"torchao"}, True, "cpu_offload"),
    ((9, 0), {"torchao"}, False, None),
    ((8, 9), {"torchao"}, False, None),
])
def test_plan_for_fp8_on_cuda(capability, packages, offload, reason) -> None:
    options = OptimizationOptions(compile="regional", quantize="fp8", cpu_offload=offload)
    plan = plan_optimizations(options, CUDA, gpu_capability=capability, has_package=packages.__contains__)
    if reason is None:
        assert plan.options.quantize == "fp8" and "quantize" not in plan.switched_off
    else:
        assert plan.options.quantize == "none" and reason in plan.switched_off["quantize"]


def test_plan_for_fp8_needs_bf16_weights() -> None:
    options = OptimizationOptions(compile="regional", quantize="fp8")
    plan = plan_optimizations(options, Placement("cuda", "fp16"), gpu_capability=(9, 0), has_package=lambda _: True)
    assert plan.options.quantize == "none"
    assert "takes bf16 weights; this model runs fp16" in plan.switched_off["quantize"]


def test_plan_switches_full_compile_off_with_cpu_offload_but_keeps_regional() -> None:
    full = plan_optimizations(OptimizationOptions(compile="full", cpu_offload=True), CUDA, gpu_capability=(9, 0))
    assert full.options.compile == "off" and "cannot trace the hooks cpu_offload" in full.switched_off["compile"]
    regional = plan_optimizations(OptimizationOptions(compile="regional", cpu_offload=True), CUDA,
                                  gpu_capability=(9, 0))
    assert regional.options.compile == "regional" and regional.switched_off == {}


def test_compile_failures_are_told_apart_from_other_errors() -> None:
    from torch._dynamo.exc import Unsupported
    from torch._inductor.exc import InductorError

    wrapped = RuntimeError("pipeline call failed")
    wrapped.__cause__ = InductorError(RuntimeError("no working C++ compiler"), "")
    assert is_compile_failure(wrapped)
    assert is_compile_failure(Unsupported("graph break"))
    assert not is_compile_failure(RuntimeError("shape mismatch"))
    assert not is_compile_failure(torch.OutOfMemoryError("CUDA out of memory"))


def test_out_of_memory_is_recognised_inside_a_wrapping_error() -> None:
    """torch.compile wraps what goes wrong while it compiles; out of memory must still split the batch."""
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError as oom:
            raise RuntimeError("compiled call failed") from oom
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped)


@pytest.mark.parametrize("backend", ["xformers", "flash", "sage"])
def test_attention_backend_package_missing_falls_back_to_native(backend: str) -> None:
    plan = plan_optimizations(OptimizationOptions(attention_backend=backend), CUDA, gpu_capability=(9, 0),
                              has_package=lambda name: False)
    assert plan.options.attention_backend == "native"
    assert "not installed" in plan.switched_off["attention_backend"]


@pytest.mark.parametrize(("error", "expected"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    (ValueError("out of memory"), False),
])
def test_is_out_of_memory(error: BaseException, expected: bool) -> None:
    assert is_out_of_memory(error) is expected


def test_warm_up_runs_each_size_at_one_and_the_largest_batch_and_skips_what_does_not_fit() -> None:
    calls: list[tuple[int, int, int]] = []

    def run(width: int, height: int, images: int) -> None:
        calls.append((width, height, images))
        if images > 2:
            raise torch.OutOfMemoryError("simulated")

    result = AppliedOptimizations()
    warm_up(run, OptimizationOptions(warmup_sizes=((512, 512), (256, 768))), 4, result, "cpu")
    assert calls == [(512, 512, 1), (512, 512, 4), (256, 768, 1), (256, 768, 4)]
    assert [entry.endswith("out of memory, skipped") for entry in result.warmup] == [False, True, False, True]

    def broken(width: int, height: int, images: int) -> None:
        raise RuntimeError("shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        warm_up(broken, OptimizationOptions(warmup_sizes=((512, 512),)), 1, AppliedOptimizations(), "cpu")


# -- on the tiny models (CPU) ------------------------------------------------------------------------


_runner = tiny_runner


async def _images(runner: DiffusersRunner, size: int = 256, n: int = 2, steps: int = 1) -> list[np.ndarray]:
    key = BatchKey(runner._spec.id, size, size, steps, 3.5, runner._spec.max_sequence_length)
    images = (await runner.run_batch(key, [ImageJobSpec("a red cube", seed) for seed in range(n)])).outputs
    assert [(image.shape, image.dtype) for image in images] == [((size, size, 3), np.uint8)] * n
    return [image.astype(np.int16) for image in images]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
async def test_cpu_options_apply_and_match_eager(model_cache: Path, model: str) -> None:
    eager = _runner(model_cache, model)
    tuned = _runner(model_cache, model, fuse_qkv=True, channels_last_vae=True, attention_backend="native_math")
    try:
        await eager.load()
        await tuned.load()
        assert tuned.optimizations is not None
        assert set(tuned.optimizations.applied) == {"dtype", "fuse_qkv", "channels_last_vae", "attention_backend"}
        assert tuned.optimizations.switched_off == {}
        # The effects, not the flags: VAE convolutions really are NHWC, and the fused projections really run.
        kernels = [p for p in tuned._pipe.vae.parameters() if p.dim() == 4 and p.shape[-1] > 1 and p.shape[1] > 1]
        assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                               for p in kernels)
        fused = [module.to_qkv for module in tuned._pipe.transformer.modules()
                 if getattr(module, "fused_projections", False)]
        calls = []
        hooks = [linear.register_forward_hook(lambda *_: calls.append(1)) for linear in fused]
        try:
            tuned_images = await _images(tuned)
        finally:
            for hook in hooks:
                hook.remove()
        assert fused and len(calls) >= len(fused)  # every fused projection ran (once per step at least)
        for plain, fast in zip(await _images(eager), tuned_images, strict=True):
            assert np.abs(plain - fast).max() <= 2  # same pixels, up to float rounding
    finally:
        eager.close()
        tuned.close()


@pytest.mark.slow
async def test_sd3_attention_backend_prefers_the_sdpa_kernel(model_cache: Path) -> None:
    runner = _runner(model_cache, "tiny-sd3", attention_backend="native_math")
    try:
        await runner.load()
        assert runner.optimizations is not None and runner.optimizations.sdpa_kernel == "MATH"
        assert "preferring MATH" in runner.optimizations.applied["attention_backend"]
        await _images(runner, n=1)
    finally:
        runner.close()


@pytest.mark.slow
async def test_vae_tiling_decodes_in_tiles(model_cache: Path) -> None:
    runner = _runner(model_cache, "tiny-flux", vae_tiling=True)
    try:
        await runner.load()
        decodes = []
        hook = runner._pipe.vae.decoder.register_forward_hook(lambda *_: decodes.append(1))
        await _images(runner, size=512, n=1)  # the tiny VAE's tile is 32 px: this decodes in tiles
        tiles = len(decodes)
        runner._pipe.vae.disable_tiling()
        await _images(runner, size=512, n=1)
        hook.remove()
        assert tiles > 1 and len(decodes) == tiles + 1  # tiled: many decoder calls; untiled: one
    finally:
        runner.close()


@pytest.mark.slow
async def test_gpu_only_options_switch_off_on_cpu_with_a_logged_reason(model_cache: Path, caplog) -> None:
    runner = _runner(model_cache, "tiny-flux", attention_backend="native_cudnn", cpu_offload=True,
                     compile="regional", quantize="fp8")
    caplog.set_level(logging.WARNING, logger="pipelines.optimizations")
    try:
        await runner.load()  # compile is lazy: nothing is compiled until a call, and none is made here
        assert runner.optimizations is not None
        assert set(runner.optimizations.switched_off) == {"attention_backend", "cpu_offload", "quantize"}
        assert runner.optimizations.applied["compile"].startswith("regional")
        logged = "\n".join(record.getMessage() for record in caplog.records)
        for reason in runner.optimizations.switched_off.values():
            assert reason in logged
    finally:
        runner.close()


@pytest.mark.slow
async def test_sd3_regional_compile_falls_back_to_the_whole_transformer(model_cache: Path) -> None:
    runner = _runner(model_cache, "tiny-sd3", compile="regional")
    try:
        await runner.load()
        assert runner.optimizations is not None
        assert runner.optimizations.applied["compile"].startswith("full: SD3Transformer2DModel declares no repeated")
        await _images(runner, size=128, n=1)  # the whole transformer compiled, and called
        assert "compile" in runner.optimizations.applied
    finally:
        runner.close()


async def _apply_as_planned_on_a_gpu(model_cache: Path, model: str,
                                    **options: typing.Any) -> tuple[typing.Any, AppliedOptimizations]:
    """A loaded tiny pipeline, then `options` applied as if the planner had kept them all (as on a GPU)."""
    runner = _runner(model_cache, model)
    await runner.load()
    runner.close()
    pipe = runner._pipe
    return pipe, apply_optimizations(pipe, OptimizationPlan(OptimizationOptions(**options), {}), CPU)


@pytest.mark.slow
async def test_sd3_with_cpu_offload_does_not_fall_back_to_full_compile(model_cache: Path) -> None:
    """Regional compile of SD3 falls back to full, which cannot trace the offload hooks: compile goes off."""
    _, result = await _apply_as_planned_on_a_gpu(model_cache, "tiny-sd3", compile="regional", cpu_offload=True)
    assert "compile" not in result.applied
    assert "full compile cannot trace the hooks cpu_offload" in result.switched_off["compile"]


@pytest.mark.slow
async def test_sd3_fuse_qkv_is_switched_off_for_xformers(model_cache: Path) -> None:
    """The pipeline's xformers switch has no processor for SD3's fused projections: fuse_qkv gives way."""
    pipe, result = await _apply_as_planned_on_a_gpu(model_cache, "tiny-sd3", attention_backend="xformers",
                                                    fuse_qkv=True)
    assert "fuse_qkv" not in result.applied
    assert "no xformers processor for fused projections" in result.switched_off["fuse_qkv"]
    assert not any(type(proc).__name__.startswith("Fused") for proc in pipe.transformer.attn_processors.values())
    if importlib.util.find_spec("xformers") is None:  # this machine: the switch itself fails, logged, native stays
        assert result.switched_off["attention_backend"].startswith("xformers: ")


@pytest.mark.slow
async def test_warmup_size_the_model_does_not_accept_is_rejected_at_load(model_cache: Path) -> None:
    runner = _runner(model_cache, "tiny-flux", warmup_sizes=["4096x4096"])
    try:
        with pytest.raises(ModelLoadError, match=r"warmup_sizes: 4096x4096 is not a size this model accepts"):
            await runner.load()
    finally:
        runner.close()


@pytest.mark.slow
async def test_regional_compile_with_warm_up_on_cpu(model_cache: Path) -> None:
    """The whole compile path on CPU (inductor's C++ backend): tens of seconds on two cores."""
    runner = _runner(model_cache, "tiny-flux", compile="regional", fuse_qkv=True, warmup_sizes=["256x256"],
                     warmup_steps=1, max_batch_images=2)
    try:
        await runner.load()
        assert runner.optimizations is not None
        assert runner.optimizations.applied["compile"].startswith("regional")
        # batch 1, then the largest batch: the second compile makes the batch dimension dynamic
        assert [entry.split(":")[0] for entry in runner.optimizations.warmup] == ["256x256 x1", "256x256 x2"]
        await _images(runner, n=1)
        await _images(runner, n=2)
        assert "compile" in runner.optimizations.applied
    finally:
        runner.close()


# -- out of device memory through a real server ------------------------------------------------------


@pytest.mark.slow
def test_out_of_memory_splits_the_batch_then_503_and_the_server_keeps_serving(tmp_path, model_cache, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="pipelines.scheduler")
    auth = {"Authorization": f"Bearer {TEST_KEY}"}
    models = {"tiny-flux": {"max_batch_images": 4, "debug_oom_above_images": 1},
              "tiny-sd3": {"debug_oom_above_images": 0}}
    with running_server(data_dir=tmp_path, model_cache=model_cache, api_keys=TEST_KEY, models=models) as server:
        def generate(model: str, n: int) -> httpx.Response:
            body = {"prompt": "a field", "model": model, "size": "256x256", "n": n, "num_inference_steps": 1,
                    "response_format": "b64_json"}
            return httpx.post(server.api_url + "/images/generations", json=body, headers=auth, timeout=120)

        split = generate("tiny-flux", 4)
        assert split.status_code == 200, split.text
        assert len(split.json()["data"]) == 4 and split.json()["perf"]["batch_size"] == 1
        messages = [record.getMessage() for record in caplog.records]
        assert any("batch of 4 ran out of device memory; retrying as 2 + 2" in m for m in messages)
        assert any("batch of 2 ran out of device memory; retrying as 1 + 1" in m for m in messages)

        refused = generate("tiny-sd3", 1)
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "insufficient_resources"

        again = generate("tiny-flux", 1)
        assert again.status_code == 200 and len(again.json()["data"]) == 1

        listed = httpx.get(server.api_url + "/models/tiny-flux", headers=auth).json()
        assert listed["optimizations"]["applied"]["dtype"].startswith("fp32")


async def test_a_load_that_fails_in_warm_up_lets_go_of_the_pipeline(model_cache: Path, monkeypatch) -> None:
    """A failed load must not keep the half-built pipeline alive (on a GPU: a second copy at the retry)."""
    import gc
    import weakref

    import pipelines.runner as local

    built: list[weakref.ref] = []
    real_load = local.load_pipeline

    def tracked_load(*args, **kwargs):
        pipe = real_load(*args, **kwargs)
        built.append(weakref.ref(pipe.transformer))
        return pipe

    def failing_warm_up(*args, **kwargs):
        raise RuntimeError("compile failed")

    monkeypatch.setattr(local, "load_pipeline", tracked_load)
    monkeypatch.setattr(local, "warm_up", failing_warm_up)
    runner = _runner(model_cache, "tiny-flux")
    try:
        with pytest.raises(ModelLoadError, match="RuntimeError: compile failed"):
            await runner.load()
        gc.collect()
        assert not runner.loaded
        assert len(built) == 1 and built[0]() is None
    finally:
        runner.close()


def test_a_pinned_kernel_is_preferred_not_exclusive() -> None:
    """Attention the chosen kernel cannot run (here: cuDNN on a CPU; on a GPU: the VAE's 512-wide head with
    flash) falls back to another kernel instead of failing the request at decode."""
    import torch

    query = torch.randn(1, 1, 8, 512)
    with AppliedOptimizations(sdpa_kernel="CUDNN_ATTENTION").call_context():
        out = torch.nn.functional.scaled_dot_product_attention(query, query, query)
    assert out.shape == query.shape


@pytest.mark.slow
async def test_an_error_of_the_call_itself_keeps_compile_on(model_cache: Path, caplog) -> None:
    """Dynamo wraps errors raised by the code it traces, so a compiled call that fails is retried eagerly; if
    that fails the same way the error is the call's, it reaches the caller, and compile stays on."""
    caplog.set_level(logging.WARNING, logger="pipelines.runner")
    runner = _runner(model_cache, "tiny-flux", compile="regional")
    try:
        await runner.load()
        assert runner.optimizations is not None
        block = runner._pipe.transformer.transformer_blocks[0]

        def failing_forward(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            raise ValueError("this block cannot take that input")

        block.forward = failing_forward
        with pytest.raises(ValueError, match="cannot take that input"):
            await _images(runner, size=128, n=1)
        assert "retrying it eagerly" in caplog.text  # the compiled attempt failed inside Dynamo first
        assert "compile" in runner.optimizations.applied and "compile" not in runner.optimizations.switched_off
        assert block._compiled_call_impl is not None  # restored after the eager retry failed
        del block.forward
        await _images(runner, size=128, n=1)
        assert "compile" in runner.optimizations.applied
    finally:
        runner.close()


@pytest.mark.slow
async def test_device_time_excludes_waiting_for_a_shared_device(model_cache: Path) -> None:
    """Models on one device take turns (`device_lock`); the turn of another is not this model's device time."""
    runner = _runner(model_cache, "tiny-flux")
    held_s = 1.0
    try:
        await runner.load()
        key = BatchKey("tiny-flux", 128, 128, 1, 3.5, runner._spec.max_sequence_length)
        lock, taken, released = device_lock("cpu"), threading.Event(), []

        def other_model_busy() -> None:
            with lock:
                taken.set()
                time.sleep(held_s)
                released.append(time.perf_counter())

        holder = threading.Thread(target=other_model_busy)
        holder.start()
        taken.wait()
        result = await runner.run_batch(key, [ImageJobSpec("a red cube", 0)])
        finished = time.perf_counter()
        await asyncio.to_thread(holder.join)
        assert len(result.outputs) == 1
        # The call could only start once the lock was released: everything before that was waiting.
        assert 0 < result.device_seconds <= finished - released[0]
    finally:
        runner.close()


def test_warm_up_without_preload_is_warned_about_at_start(tmp_path: Path, model_cache: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="server.app")
    models = {"tiny-flux": {"warmup_sizes": ["256x256"]}, "tiny-sd3": {"warmup_sizes": ["256x256"]}}
    with running_server(data_dir=tmp_path, model_cache=model_cache, models=models, preload=["tiny-sd3"]):
        pass
    warnings = [record.getMessage() for record in caplog.records if "warmup_sizes" in record.getMessage()]
    assert warnings == ["model tiny-flux has warmup_sizes but is not in IMAGESERVE_PRELOAD: its first request "
                        "will wait for the load and the warm-up"]


@pytest.mark.slow
async def test_fp8_goes_through_the_real_torchao_which_refuses_this_cpu(model_cache: Path) -> None:
    """The torchao calls are the real ones (`make test` installs the `gpu` extra): on a CPU torchao's own
    hardware check refuses, and the model loads with fp8 switched off, logged, rather than failing."""
    pytest.importorskip("torchao", reason="the `gpu` extra (torchao) is not installed")
    pipe, result = await _apply_as_planned_on_a_gpu(model_cache, "tiny-flux", compile="regional", quantize="fp8")
    assert "quantize" not in result.applied
    assert result.switched_off["quantize"].startswith("torchao could not quantize to fp8: AssertionError: ")
    assert "compute capability" in result.switched_off["quantize"]
    assert all(type(module.weight) is torch.nn.Parameter for module in pipe.transformer.modules()
               if isinstance(module, torch.nn.Linear))
