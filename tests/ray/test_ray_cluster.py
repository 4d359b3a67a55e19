"""The Ray Serve cluster mode on a real local Ray instance (127.0.0.1, no GPUs), with simulated models.

One Ray instance and one Serve HTTP proxy for the module; each test runs its own application, built by
`server.ray_serve.application.build_application` from a settings file, and deletes it. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from server.ray_serve.application import build_application  # noqa: E402
from server.ray_serve.source import settings_source  # noqa: E402

pytestmark = pytest.mark.ray

KEY = "sk-ray-cluster-test-0123456789"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a single-machine instance: Ray's servers on 127.0.0.1 only
    # Replicas and handles report their load every half second (default 10 s), so autoscaling reacts in tests.
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    # The workers inherit this environment: the front end's key comes from it, as on a real node.
    "IMAGESERVE_API_KEYS": f"{KEY}:raytier",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance with Serve's proxy on a free loopback port; yields the proxy's base URL."""
    saved = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)
    port = _free_port()
    ray.init(address="local", include_dashboard=False, num_cpus=4, num_gpus=0, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


MODEL = """
[models.{name}]
kind = "simulated"
time_scale = {time_scale}
max_batch_images = {batch}
sizes = ["256x256"]
extra_params = ["seed"]
price_usd = 0.01
[models.{name}.ray]
num_cpus = 0.1
{ray}
"""


@contextlib.contextmanager
def application(base: str, tmp_path: Path, name: str, models: str, per_minute: int = 1000) -> Iterator[str]:
    config = tmp_path / "imageserve.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\nmodel_cache = "{tmp_path / "cache"}"\n'
                      f'default_model = "dall-e-2"\n[tiers.raytier]\nimages_per_minute = {per_minute}\n'
                      f'images_per_day = 100000\n{models}')
    port = int(base.rsplit(":", 1)[1])
    serve.run(build_application(settings_source(str(config), {"port": port})), name=name, route_prefix="/")
    try:
        wait_for(lambda: _answers(base + "/health"), 30, "the application's routes on the proxy")
        yield base
    finally:
        serve.delete(name)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


def _client(base: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _running(app: str, deployment: str) -> dict[str, int]:
    return dict(serve.status().applications[app].deployments[deployment].replica_states)


async def _generate_many(base: str, model: str, count: int) -> list[Any]:
    client = _client(base)
    try:
        return await asyncio.gather(*(
            client.images.generate(model=model, prompt=f"fox {i}", size="256x256", response_format="b64_json",
                                   extra_body={"seed": i}) for i in range(count)))
    finally:
        await client.close()


def test_two_replicas_both_take_work_through_the_proxy(cluster: str, tmp_path: Path) -> None:
    models = MODEL.format(name="sim2", time_scale=0.002, batch=2, ray="num_replicas = 2")
    with application(cluster, tmp_path, "two", models) as base:
        responses = asyncio.run(_generate_many(base, "sim2", 16))
        listed = httpx.get(base + "/v1/models/sim2", headers={"Authorization": f"Bearer {KEY}"}).json()
        metrics = httpx.get(base + "/metrics").text
        unavailable = httpx.post(base + "/v1/images/generations", headers={"Authorization": f"Bearer {KEY}"},
                                 json={"model": "tiny-flux", "prompt": "x", "size": "256x256"})
    replicas = {r.model_extra["perf"]["device"].split("/")[0] for r in responses}
    assert len(replicas) == 2 and all(name.startswith("model-sim2#") for name in replicas)
    assert all(r.model_extra["perf"]["device"].endswith("/sim-sim2") for r in responses)
    assert listed["ready"] and {r["replica"] for r in listed["replicas_seen"]} == replicas
    for replica in replicas:  # batches reported back to the front end's metrics, per replica and device
        assert f'imageserve_device_batches_total{{device="{replica}/sim-sim2",model="sim2"}}' in metrics
    # A local model without a [models.<id>.ray] table is not deployed: a clear 503, not a hang.
    assert unavailable.status_code == 503 and "tiny-flux.ray" in unavailable.json()["error"]["message"]


def test_quotas_are_exact_across_the_ray_path(cluster: str, tmp_path: Path) -> None:
    """5 images a minute, 8 concurrent requests spread over two model replicas: exactly 5 made and billed."""
    models = MODEL.format(name="simq", time_scale=0.002, batch=4, ray="num_replicas = 2")
    auth = {"Authorization": f"Bearer {KEY}"}
    with application(cluster, tmp_path, "quota", models, per_minute=5) as base:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as http:
                return await asyncio.gather(*(http.post(base + "/v1/images/generations", headers=auth, json={
                    "model": "simq", "prompt": f"p{i}", "size": "256x256", "response_format": "b64_json"})
                    for i in range(8)))

        responses = asyncio.run(burst())
        usage = httpx.get(base + "/v1/usage", headers=auth).json()
    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 3
    assert all(r.json()["error"]["type"] == "rate_limit_exceeded" for r in responses if r.status_code == 429)
    assert usage["total"]["images"] == 5 and usage["limits"]["used_last_minute"] == 5
    assert usage["total"]["cost_usd"] == pytest.approx(0.05)


def test_a_killed_replica_is_a_retryable_503_and_is_replaced(cluster: str, tmp_path: Path) -> None:
    # One replica; one 256x256 image takes 28 steps * (0.0286 + 0.1975 * 0.0655) s * 3.0 = 3.5 s.
    models = MODEL.format(name="simk", time_scale=3.0, batch=1, ray="num_replicas = 1")
    with application(cluster, tmp_path, "kill", models) as base:
        auth = {"Authorization": f"Bearer {KEY}"}
        replica_names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                         if actor["namespace"] == "serve" and "#model-simk#" in actor["name"]]
        assert len(replica_names) == 1

        async def killed_mid_request() -> httpx.Response:
            async with httpx.AsyncClient(timeout=60) as http:
                pending = asyncio.create_task(http.post(base + "/v1/images/generations", headers=auth, json={
                    "model": "simk", "prompt": "slow", "size": "256x256", "response_format": "b64_json"}))
                await asyncio.sleep(1.0)  # its batch (3.5 s) is running on the replica
                assert not pending.done()
                ray.kill(ray.get_actor(replica_names[0], namespace="serve"), no_restart=True)
                return await pending

        lost = asyncio.run(killed_mid_request())
        assert lost.status_code == 503, lost.text
        assert lost.json()["error"]["type"] == "replica_lost" and "Retry-After" in lost.headers
        wait_for(lambda: _running("kill", "model-simk") == {"RUNNING": 1} and not any(
            actor["name"] == replica_names[0] for actor in ray.util.list_named_actors(all_namespaces=True)),
            60, "Serve to replace the killed replica")
        again = httpx.post(base + "/v1/images/generations", headers=auth, timeout=60, json={
            "model": "simk", "prompt": "after", "size": "256x256", "response_format": "b64_json"})
        assert again.status_code == 200, again.text
        usage = httpx.get(base + "/v1/usage", headers=auth).json()
    assert usage["total"]["images"] == 1  # the lost request was not billed


def test_autoscaling_goes_from_one_replica_to_two_under_load_and_back(cluster: str, tmp_path: Path) -> None:
    ray_table = ("min_replicas = 1\nmax_replicas = 2\ntarget_ongoing_requests = 1\nupscale_delay_s = 0.5\n"
                 "downscale_delay_s = 2\nlook_back_period_s = 1")
    models = MODEL.format(name="sima", time_scale=1.0, batch=1, ray=ray_table)
    with application(cluster, tmp_path, "scale", models) as base:
        assert _running("scale", "model-sima") == {"RUNNING": 1}

        async def load_until_two() -> list[Any]:
            client = _client(base)
            done: list[Any] = []
            stop = time.monotonic() + 45

            async def loop(worker: int) -> None:
                while time.monotonic() < stop and _running("scale", "model-sima").get("RUNNING", 0) < 2:
                    done.append(await client.images.generate(model="sima", prompt=f"w{worker}", size="256x256",
                                                             response_format="b64_json"))

            try:
                await asyncio.gather(*(loop(worker) for worker in range(6)))
            finally:
                await client.close()
            return done

        asyncio.run(load_until_two())
        assert _running("scale", "model-sima").get("RUNNING", 0) == 2
        wait_for(lambda: _running("scale", "model-sima") == {"RUNNING": 1}, 90, "the idle model to scale back to 1")
