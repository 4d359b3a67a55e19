"""A tiny model on every CUDA device of the box: `cuda:N` placement, one pipeline copy per device."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from openai import AsyncOpenAI

from tests.support.server_harness import running_server

needs_two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                    reason="needs two CUDA devices")


@pytest.mark.gpu
@needs_two_gpus
async def test_tiny_flux_on_all_devices_runs_batches_on_each(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, device="cuda", batch_wait_ms=0,
                        models={"tiny-flux": {"devices": "all", "max_batch_images": 2}}) as server:
        client = AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        responses = await asyncio.gather(*(
            client.images.generate(model="tiny-flux", prompt=f"cube {i}", size="256x256",
                                   response_format="b64_json", extra_body={"seed": i}) for i in range(24)))
        await client.close()
    used = {r.model_extra["perf"]["device"] for r in responses}
    assert used <= {f"cuda:{index}" for index in range(torch.cuda.device_count())} and len(used) >= 2
