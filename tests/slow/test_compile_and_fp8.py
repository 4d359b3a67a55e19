"""The GPU path's compile and fp8 choices, proven on the CPU: shape-generic compiled graphs (no recompile after
warm-up), the recompile limit is not a broken toolchain, one set of inductor flags, fp8 on the repeated
blocks only, and pixels that leave the device once as uint8, equal to diffusers' own PIL output."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.device import Placement
from pipelines.loading import load_pipeline, locate_weights
from pipelines.optimizations import (
    INDUCTOR_FLAGS,
    OptimizationOptions,
    OptimizationPlan,
    apply_optimizations,
    fp8_config,
    fp8_targets,
    graphs_compiled,
    is_compile_failure,
    is_recompile_limit,
    quantize_blocks,
)
from pipelines.pixels import to_pixels
from pipelines.runner import DiffusersRunner
from pipelines.scheduler import BatchKey, ImageJobSpec
from tests.support.runners import tiny_runner

CPU = Placement("cpu", "fp32")


_runner = tiny_runner


async def _run(runner: DiffusersRunner, width: int, height: int, n: int) -> list[np.ndarray]:
    key = BatchKey(runner._spec.id, width, height, 1, 3.5, runner._spec.max_sequence_length)
    outputs = (await runner.run_batch(key, [ImageJobSpec("a red cube", seed) for seed in range(n)])).outputs
    assert [(image.shape, image.dtype) for image in outputs] == [((height, width, 3), np.uint8)] * n
    return outputs


def _pipeline(model_cache: Path, kind: str):
    location = locate_weights(kind, None, model_cache)
    return load_pipeline(kind, location, model_cache, "cpu", torch.float32)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Dynamo's caches are per process: earlier tests' graphs must not count (or fill the recompile limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# -- compile: shapes ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
async def test_after_warm_up_new_sizes_and_batch_sizes_compile_nothing(model_cache: Path, model: str,
                                                                       fresh_dynamo: None) -> None:
    """Warm-up at one square size, batch 1 and the largest batch; then other sizes (not square, larger,
    smaller) and batch sizes run on the same graphs: no request stalls the device for a compile."""
    runner = _runner(model_cache, model, compile="regional", warmup_sizes=["256x256"], warmup_steps=1,
                     max_batch_images=3)
    before_load = graphs_compiled()
    try:
        await runner.load()
        assert runner.optimizations is not None
        assert "compile" in runner.optimizations.applied and "compile_vae" in runner.optimizations.applied
        after_warm_up = graphs_compiled()
        assert after_warm_up > before_load  # the counter sees compiles: warm-up made the graphs
        for width, height, n in [(320, 256, 2), (384, 512, 3), (256, 512, 1), (128, 128, 3), (512, 256, 1)]:
            await _run(runner, width, height, n)
        assert graphs_compiled() == after_warm_up
        assert "compile" not in runner.optimizations.switched_off
    finally:
        runner.close()


@pytest.mark.slow
async def test_the_recompile_limit_runs_one_call_eagerly_and_keeps_compile(model_cache: Path, fresh_dynamo: None,
                                                                         caplog) -> None:
    """Dynamo refusing another graph (`FailOnRecompileLimitHit`, raised from inside a compiled block) is not a
    broken toolchain: that call answers eagerly and compile stays on for the next ones."""
    from torch._dynamo.exc import FailOnRecompileLimitHit

    caplog.set_level(logging.WARNING, logger="pipelines.runner")
    runner = _runner(model_cache, "tiny-flux", compile="regional", compile_vae=False)
    try:
        await runner.load()
        assert runner.optimizations is not None
        first = await _run(runner, 128, 128, 1)
        block = runner._pipe.transformer.transformer_blocks[0]
        compiled_call = block._compiled_call_impl
        refusals = []

        def refuse_once(*args, **kwargs):
            if not refusals:
                refusals.append(True)
                raise FailOnRecompileLimitHit("Hard failure due to fullgraph=True")
            return compiled_call(*args, **kwargs)

        block._compiled_call_impl = refuse_once
        again = await _run(runner, 128, 128, 1)
        assert refusals and "recompile limit was hit" in caplog.text
        assert "compile" in runner.optimizations.applied and "compile" not in runner.optimizations.switched_off
        assert np.abs(again[0].astype(int) - first[0]).max() <= 2  # the eager call made the same image
        assert block._compiled_call_impl is refuse_once  # compiled calls are back for the next request
        await _run(runner, 128, 128, 1)
        assert len(refusals) == 1
    finally:
        runner.close()


def test_the_recompile_limit_is_told_apart_from_a_broken_compiler() -> None:
    from torch._dynamo.exc import BackendCompilerFailed, FailOnRecompileLimitHit

    try:
        try:
            raise RuntimeError("Unsupported: cache limit hit")
        except RuntimeError as inner:
            raise FailOnRecompileLimitHit("Hard failure due to fullgraph=True") from inner
    except FailOnRecompileLimitHit as exc:
        limit = exc
    assert is_compile_failure(limit) and is_recompile_limit(limit)
    wrapped = RuntimeError("while running the pipeline")
    wrapped.__cause__ = limit
    assert is_recompile_limit(wrapped)
    broken = BackendCompilerFailed.__new__(BackendCompilerFailed)
    assert is_compile_failure(broken) and not is_recompile_limit(broken)


# -- compile: one set of flags -----------------------------------------------------------------------


@pytest.mark.slow
async def test_compiling_sets_the_inductor_flags_and_torchao_is_told_not_to(model_cache: Path, monkeypatch) -> None:
    import torch._inductor.config as inductor_config

    for name, value in INDUCTOR_FLAGS.items():  # start from the opposite of every flag (restored afterwards)
        monkeypatch.setattr(inductor_config, name, not value)
    pipe = _pipeline(model_cache, "tiny-flux")
    apply_optimizations(pipe, OptimizationPlan(OptimizationOptions(compile="regional"), {}), CPU)
    assert {name: getattr(inductor_config, name) for name in INDUCTOR_FLAGS} == INDUCTOR_FLAGS
    assert fp8_config().set_inductor_config is False


# -- fp8: which layers ---------------------------------------------------------------------------------


def _linear_names(module: torch.nn.Module) -> set[str]:
    return {name for name, child in module.named_modules() if isinstance(child, torch.nn.Linear)}


@pytest.mark.slow
def test_fp8_targets_only_the_linear_layers_of_the_repeated_blocks(model_cache: Path) -> None:
    transformer = _pipeline(model_cache, "tiny-flux").transformer
    targets = fp8_targets(transformer)
    inside = {name for name in _linear_names(transformer)
              if name.startswith(("transformer_blocks.", "single_transformer_blocks."))}
    assert targets and set(targets) == inside
    outside = _linear_names(transformer) - inside  # embedders, time/guidance MLPs, output projection
    assert {"x_embedder", "context_embedder", "proj_out"} <= outside


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tiny-flux", "tiny-sd3"])
def test_fp8_leaves_the_unfused_projections_alone_once_fused(model_cache: Path, kind: str) -> None:
    transformer = _pipeline(model_cache, kind).transformer
    unfused_before = {name for name in fp8_targets(transformer) if name.rsplit(".", 1)[-1] in
                      {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"}}
    assert unfused_before
    transformer.fuse_qkv_projections()
    targets = set(fp8_targets(transformer))
    assert not targets & unfused_before
    assert any(name.endswith(".to_qkv") for name in targets)
    assert any(name.endswith(".to_added_qkv") for name in targets)
    assert all(name.startswith("transformer_blocks.") or name.startswith("single_transformer_blocks.")
               for name in targets)


@pytest.mark.slow
def test_quantization_changes_exactly_the_targets(model_cache: Path) -> None:
    """torchao's own `quantize_` with our filter, run with a config that works on a CPU (int8 weight-only): the
    layers whose weights became torchao tensors are exactly the fp8 targets."""
    from torchao.quantization import Int8WeightOnlyConfig

    transformer = _pipeline(model_cache, "tiny-flux").transformer
    transformer.fuse_qkv_projections()
    quantized = quantize_blocks(transformer, Int8WeightOnlyConfig(set_inductor_config=False))
    changed = {name for name, module in transformer.named_modules()
               if isinstance(module, torch.nn.Linear) and type(module.weight.data) is not torch.Tensor}
    assert changed == set(quantized) == set(fp8_targets(transformer))


# -- pixels ----------------------------------------------------------------------------------------------


def test_pixels_round_exactly_as_diffusers_pil_output() -> None:
    from diffusers.image_processor import VaeImageProcessor

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 24, 40, generator=generator)
    images[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.5 / 255, 254.5 / 255])  # edges and exact halves
    pixels = to_pixels(images)
    expected = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images))
    assert pixels.shape == (3, 24, 40, 3) and pixels.dtype == np.uint8
    for ours, theirs in zip(pixels, expected, strict=True):
        assert np.array_equal(ours, np.asarray(theirs))


@pytest.mark.slow
async def test_the_runner_returns_the_pixels_of_diffusers_pil_output(model_cache: Path) -> None:
    runner = _runner(model_cache, "tiny-flux")
    try:
        await runner.load()
        ours = await _run(runner, 256, 128, 2)
        pil = runner._pipe(prompt=["a red cube"] * 2, width=256, height=128, num_inference_steps=1,
                           guidance_scale=3.5, max_sequence_length=runner._spec.max_sequence_length,
                           generator=[torch.Generator("cpu").manual_seed(seed) for seed in range(2)],
                           output_type="pil").images
        for pixels, image in zip(ours, pil, strict=True):
            assert np.array_equal(pixels, np.asarray(image))
    finally:
        runner.close()
