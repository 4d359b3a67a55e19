"""A client that goes away before its batch starts costs no device time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_KEY, TEST_KEYS
from tests.server_harness import running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def test_jobs_of_a_disconnected_client_are_dropped(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, api_keys=TEST_KEYS) as server:
        url = server.api_url + "/images/generations"
        small = {"prompt": "x", "model": "tiny-flux", "size": "256x256", "num_inference_steps": 1}
        assert httpx.post(url, json=small, headers=AUTH, timeout=120).status_code == 200  # loads the model
        scheduler = server.app.state.backends["tiny-flux"]._scheduler
        batches_before = scheduler.stats.batches

        # Occupy the worker with a long batch (a different size, so the next job cannot join it).
        long_job = {**small, "size": "768x768", "num_inference_steps": 12}
        long_result: dict = {}
        worker = threading.Thread(
            target=lambda: long_result.update(r=httpx.post(url, json=long_job, headers=AUTH, timeout=600))
        )
        worker.start()
        deadline = time.monotonic() + 60
        while not scheduler._queue and time.monotonic() < deadline:  # the long job is queued...
            time.sleep(0.005)
        while scheduler._queue and time.monotonic() < deadline:  # ...then taken onto the device
            time.sleep(0.005)
        assert worker.is_alive() and scheduler.stats.batches == batches_before

        # This client gives up while its job is still queued behind the long batch.
        try:
            early = httpx.post(url, json=small, headers=AUTH, timeout=httpx.Timeout(60, read=0.5))
        except httpx.ReadTimeout:
            pass
        else:
            pytest.fail(f"expected the request to still be queued, got {early.status_code}: {early.text[:300]}")
        while scheduler.stats.dropped_jobs == 0 and worker.is_alive():
            time.sleep(0.01)
        assert worker.is_alive(), "the long batch ended before the abandoned job could be observed"
        worker.join()

        assert long_result["r"].status_code == 200
        assert scheduler.stats.dropped_jobs == 1
        assert scheduler.stats.batches == batches_before + 1  # only the long batch ran
        # And the server keeps serving.
        assert httpx.post(url, json=small, headers=AUTH, timeout=120).status_code == 200
