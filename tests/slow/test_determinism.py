"""Same seed, same prompt, same parameters: the same pixels, alone or inside a batch."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _pixels(server, **body) -> tuple[np.ndarray, dict]:
    payload = {"size": "256x256", "num_inference_steps": 2, "response_format": "b64_json", **body}
    response = httpx.post(server.api_url + "/images/generations", json=payload, headers=AUTH, timeout=300)
    assert response.status_code == 200, response.text
    data = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(data["data"][0]["b64_json"])))
    return np.asarray(image).astype(np.int16), data


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    # A long batch wait, so concurrent requests reliably meet in one batch.
    with running_server(data_dir=tmp_path_factory.mktemp("data"), model_cache=model_cache, api_keys=TEST_KEYS,
                        batch_wait_ms=3000) as server:
        yield server


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_same_seed_same_pixels_and_other_seed_other_pixels(batching_server, model: str) -> None:
    extra = {"negative_prompt": "blur"} if model == "tiny-sd3" else {}
    first, _ = _pixels(batching_server, model=model, prompt="a red barn", seed=1234, **extra)
    again, _ = _pixels(batching_server, model=model, prompt="a red barn", seed=1234, **extra)
    other, _ = _pixels(batching_server, model=model, prompt="a red barn", seed=1235, **extra)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


def test_no_seed_gets_a_random_one_that_reproduces(batching_server) -> None:
    pixels, data = _pixels(batching_server, model="tiny-flux", prompt="a boat")
    seed = data["data"][0]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    replay, _ = _pixels(batching_server, model="tiny-flux", prompt="a boat", seed=seed)
    assert np.array_equal(pixels, replay)


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
def test_a_batch_of_four_concurrent_requests_matches_solo_runs(batching_server, model: str) -> None:
    requests = [dict(model=model, prompt=f"prompt number {i}", seed=100 + i) for i in range(4)]
    if model == "tiny-sd3":
        for i, request in enumerate(requests):
            request["negative_prompt"] = "blurry" if i % 2 else "dark"
    with ThreadPoolExecutor(4) as pool:
        batched = list(pool.map(lambda body: _pixels(batching_server, **body), requests))
    assert [data["perf"]["batch_size"] for _, data in batched] == [4, 4, 4, 4]
    for request, (pixels, _) in zip(requests, batched, strict=True):
        solo, data = _pixels(batching_server, **request)
        assert data["perf"]["batch_size"] == 1
        # Batched and solo runs agree to float rounding: at most a step or two of 255 per channel.
        assert np.abs(pixels - solo).max() <= 2, request
