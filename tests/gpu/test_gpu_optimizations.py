"""GPU-only tests: each is marked `gpu` and skips without CUDA (`pytest -m gpu` runs them on a GPU box)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.device import Placement
from pipelines.optimizations import graphs_compiled
from pipelines.runner import DiffusersRunner
from pipelines.scheduler import BatchKey, ImageJobSpec
from tests.support.runners import tiny_runner

CUDA = Placement("cuda", "bf16")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _runner(model_cache: Path, **fields) -> DiffusersRunner:
    return tiny_runner(model_cache, "tiny-flux", device="cuda", dtype="bf16", **fields)


async def _images(runner: DiffusersRunner, width: int = 256, height: int = 256, n: int = 2) -> list[np.ndarray]:
    key = BatchKey(runner._spec.id, width, height, 1, 3.5, runner._spec.max_sequence_length)
    images = (await runner.run_batch(key, [ImageJobSpec("a red cube", seed) for seed in range(n)])).outputs
    assert [(image.shape, image.dtype) for image in images] == [((height, width, 3), np.uint8)] * n
    return images


@pytest.mark.gpu
@needs_cuda
async def test_gpu_compile_fuse_channels_last_and_fp8_where_supported(model_cache: Path) -> None:
    capability = torch.cuda.get_device_capability()
    runner = _runner(model_cache, compile="regional", fuse_qkv=True, channels_last_vae=True, quantize="fp8",
                     attention_backend="native", warmup_sizes=["256x256"], max_batch_images=2)
    try:
        await runner.load()
        assert runner.optimizations is not None
        applied = runner.optimizations.applied
        assert {"compile", "compile_vae", "fuse_qkv", "channels_last_vae"} <= set(applied)
        if capability >= (8, 9) and importlib.util.find_spec("torchao") is not None:
            assert "quantize" in applied, runner.optimizations.switched_off
            assert runner.optimizations.fp8_layers
        else:
            reason = runner.optimizations.switched_off["quantize"]
            assert "torchao" in reason or "compute capability" in reason, reason
        graphs = graphs_compiled()
        for width, height, n in [(256, 256, 2), (320, 256, 1), (256, 384, 2)]:  # new sizes: no recompile
            await _images(runner, width, height, n)
        assert graphs_compiled() == graphs
    finally:
        runner.close()


@pytest.mark.gpu
@needs_cuda
async def test_gpu_cpu_offload_and_cudnn_attention(model_cache: Path) -> None:
    runner = _runner(model_cache, cpu_offload=True, attention_backend="native_cudnn", vae_tiling=True)
    try:
        await runner.load()
        assert runner.optimizations is not None
        assert {"cpu_offload", "attention_backend", "vae_tiling"} <= set(runner.optimizations.applied)
        await _images(runner, n=1)
    finally:
        runner.close()
