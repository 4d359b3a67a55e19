"""A client that goes away before its batch starts costs no device time."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import running_server

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.005)


def test_jobs_of_a_disconnected_client_are_dropped(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, api_keys=TEST_KEYS) as server:
        url = server.api_url + "/images/generations"
        small = {"prompt": "x", "model": "tiny-flux", "size": "256x256", "num_inference_steps": 1}
        assert httpx.post(url, json=small, headers=AUTH, timeout=120).status_code == 200  # loads the model
        backend = server.app.state.backends["tiny-flux"]
        scheduler, runner = backend._scheduler, next(iter(backend._runners.values()))
        batches_before = scheduler.stats.batches

        # Hold the worker thread inside a batch until the test releases it (no timing guesses).
        release, on_device = threading.Event(), threading.Event()
        run_batch_on_worker = runner._run_sync

        def held_run(key, specs):
            if key.width == 512:
                on_device.set()
                release.wait(60)
            return run_batch_on_worker(key, specs)

        runner._run_sync = held_run
        held = {**small, "size": "512x512"}
        held_result: dict = {}
        worker = threading.Thread(
            target=lambda: held_result.update(r=httpx.post(url, json=held, headers=AUTH, timeout=120))
        )
        worker.start()
        try:
            _wait_until(on_device.is_set, "the held batch to reach the device")

            # This client gives up while its job is queued behind the held batch.
            try:
                early = httpx.post(url, json=small, headers=AUTH, timeout=httpx.Timeout(60, read=0.5))
            except httpx.ReadTimeout:
                pass
            else:
                pytest.fail(f"expected the request to be queued, got {early.status_code}: {early.text[:300]}")

            # The server notices the disconnect and cancels the queued job before it runs.
            def abandoned_in_queue() -> bool:
                queue = list(scheduler._queue)
                return bool(queue) and all(job.future.done() for job in queue)

            _wait_until(abandoned_in_queue, "the abandoned job to be cancelled in the queue")
        finally:
            release.set()
            worker.join()
        assert held_result["r"].status_code == 200

        # It is dropped, never run, and the server keeps serving.
        assert httpx.post(url, json=small, headers=AUTH, timeout=120).status_code == 200
        assert scheduler.stats.dropped_jobs == 1
        assert scheduler.stats.batches == batches_before + 2  # the held batch and the last request only
