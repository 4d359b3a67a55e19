"""Same seed, same prompt, same parameters: the same pixels, alone or inside a batch."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
MODELS = ("tiny-flux", "tiny-sd3")
BATCH = 4
HOLD_SIZE = 320


def queue_depth(server, model: str) -> float:
    """Images queued for the model's device, from `/metrics`."""
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    found = re.search(rf'^imageserve_queue_depth\{{model="{model}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def _pixels(server, **body) -> tuple[np.ndarray, dict]:
    payload = {"size": "256x256", "num_inference_steps": 2, "response_format": "b64_json", **body}
    response = httpx.post(server.api_url + "/images/generations", json=payload, headers=AUTH, timeout=300)
    assert response.status_code == 200, response.text
    data = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(data["data"][0]["b64_json"])))
    return np.asarray(image).astype(np.int16), data


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    """No batch wait, so this module's sequential requests each run alone (batch size 1) without waiting; a
    batch of four is formed by holding the device while four requests queue (see the batch test), not by a
    wall-clock window."""
    with running_server(data_dir=tmp_path_factory.mktemp("data"), model_cache=model_cache, api_keys=TEST_KEYS,
                        batch_wait_ms=0, models={model: {"max_batch_images": BATCH} for model in MODELS}) as server:
        yield server


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_same_pixels_and_other_seed_other_pixels(server, model: str) -> None:
    extra = {"negative_prompt": "blur"} if model == "tiny-sd3" else {}
    first, _ = _pixels(server, model=model, prompt="a red barn", seed=1234, **extra)
    again, _ = _pixels(server, model=model, prompt="a red barn", seed=1234, **extra)
    other, _ = _pixels(server, model=model, prompt="a red barn", seed=1235, **extra)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


def test_no_seed_gets_a_random_one_that_reproduces(server) -> None:
    pixels, data = _pixels(server, model="tiny-flux", prompt="a boat")
    seed = data["data"][0]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    replay, _ = _pixels(server, model="tiny-flux", prompt="a boat", seed=seed)
    assert np.array_equal(pixels, replay)


@pytest.mark.parametrize("model", MODELS)
def test_a_batch_of_four_concurrent_requests_matches_solo_runs(server, model: str) -> None:
    requests = [dict(model=model, prompt=f"prompt number {i}", seed=100 + i) for i in range(BATCH)]
    if model == "tiny-sd3":
        for i, request in enumerate(requests):
            request["negative_prompt"] = "blurry" if i % 2 else "dark"
    _pixels(server, model=model, prompt="load the model", seed=1)
    backend = server.app.state.backends[model]
    runner = next(iter(backend._runners.values()))
    run_batch_on_worker = runner._run_sync
    on_device, release = threading.Event(), threading.Event()

    def held_run(key, specs):  # another size: never batched with the four
        if key.width == HOLD_SIZE:
            on_device.set()
            release.wait(120)
        return run_batch_on_worker(key, specs)

    runner._run_sync = held_run
    try:
        with ThreadPoolExecutor(BATCH + 1) as pool:
            holder = pool.submit(_pixels, server, model=model, prompt="hold", seed=7, size=f"{HOLD_SIZE}x{HOLD_SIZE}")
            assert on_device.wait(120), "the holding batch never reached the device"
            pending = [pool.submit(_pixels, server, **body) for body in requests]
            # Jobs that queued while the device was busy start together as soon as it frees.
            deadline = time.monotonic() + 120
            while queue_depth(server, model) < BATCH:
                assert time.monotonic() < deadline, "the four requests never queued"
                time.sleep(0.01)
            release.set()
            batched = [future.result() for future in pending]
            assert holder.result()[1]["perf"]["batch_size"] == 1
    finally:
        release.set()
        runner._run_sync = run_batch_on_worker
    assert [data["perf"]["batch_size"] for _, data in batched] == [BATCH] * BATCH
    for request, (pixels, _) in zip(requests, batched, strict=True):
        solo, data = _pixels(server, **request)
        assert data["perf"]["batch_size"] == 1
        # Batched and solo runs agree to float rounding: at most a step or two of 255 per channel.
        assert np.abs(pixels - solo).max() <= 2, request
