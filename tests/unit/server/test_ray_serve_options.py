"""The Ray cluster mode without a Ray instance: settings, deployment options, the remote backend, the CLI."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from pipelines.errors import OutOfDeviceMemory, QueueFull
from pipelines.types import GenerationRequest, GenerationResult
from server.backends.remote import RemoteModelBackend, ReplicaAnswer
from server.cli.main import main
from server.ray_serve import INSTALL_HINT
from server.ray_serve.application import deployed_models, model_deployment_options, shared_database_warning
from server.ray_serve.source import load_from_source, settings_source
from server.registry import build_registry
from server.settings import load_settings


def _options(**model: Any) -> dict[str, Any]:
    settings = load_settings(models={"flux-dev": model} if model else {})
    return model_deployment_options(settings, build_registry(settings).get("flux-dev"))


def test_a_model_runs_on_the_cluster_only_with_a_ray_table() -> None:
    settings = load_settings(models={"flux-dev": {"ray": {}}, "sim": {"kind": "simulated"}})
    assert [spec.id for spec in deployed_models(settings)] == ["flux-dev"]


def test_fixed_replicas_and_gpu_defaults() -> None:
    options = _options(ray={"num_replicas": 3, "num_cpus": 2, "memory": 2e10, "accelerator_type": "H100"})
    assert options["name"] == "model-flux-dev" and options["num_replicas"] == 3
    assert options["ray_actor_options"] == {"num_gpus": 1.0, "num_cpus": 2.0, "memory": 2e10,
                                            "accelerator_type": "H100"}
    assert "autoscaling_config" not in options
    assert options["max_ongoing_requests"] == 64 == options["max_queued_requests"]  # the engine's queue bound
    settings = load_settings(models={"sim": {"kind": "simulated", "ray": {}}})
    simulated = model_deployment_options(settings, build_registry(settings).get("sim"))
    assert simulated["ray_actor_options"]["num_gpus"] == 0.0 and simulated["num_replicas"] == 1


def test_autoscaling_aims_at_one_full_batch_per_replica_unless_told() -> None:
    options = _options(max_batch_images=6, ray={"min_replicas": 1, "max_replicas": 4, "downscale_delay_s": 30})
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 6,
                                             "downscale_delay_s": 30.0}
    told = _options(ray={"max_replicas": 2, "target_ongoing_requests": 2.5})
    assert told["autoscaling_config"]["target_ongoing_requests"] == 2.5
    assert told["autoscaling_config"]["min_replicas"] == 1


@pytest.mark.parametrize(("ray", "message"), [
    ({"num_replicas": 2, "max_replicas": 3}, "not both"),
    ({"min_replicas": 1}, "needs max_replicas"),
    ({"min_replicas": 3, "max_replicas": 2}, "not be above"),
    ({"num_gpus": -1}, "num_gpus"),
    ({"name": "x"}, "not a Ray actor option"),
])
def test_ray_tables_that_cannot_work_are_refused_at_load(ray: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(models={"flux-dev": {"ray": ray}})


def test_secrets_never_travel_in_the_application_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="environment"):
        settings_source(None, {"api_keys": "sk-secret:pro"})
    config = tmp_path / "imageserve.toml"
    config.write_text('default_model = "tiny-flux"\n')
    source = settings_source(str(config), {"port": 9000})
    assert source == {"config": str(config), "settings": {"port": 9000}}
    loaded = load_from_source(source)
    assert (loaded.default_model, loaded.port) == ("tiny-flux", 9000)
    with pytest.raises(ValueError, match="unknown application arguments"):
        load_from_source({"config": None, "secrets": {}})


def test_more_than_one_front_end_on_sqlite_is_warned_about() -> None:
    assert shared_database_warning(load_settings()) is None
    warning = shared_database_warning(load_settings(ray={"ingress_replicas": 2}))
    assert warning and "PostgreSQL" in warning and "IMAGESERVE_DATABASE_URL" in warning
    assert shared_database_warning(load_settings(ray={"ingress_replicas": 2},
                                                 database_url="postgresql://u:p@db/x")) is None


class FakeCalls:
    def __init__(self, answer: ReplicaAnswer) -> None:
        self.answer = answer

    async def generate(self, request: GenerationRequest) -> ReplicaAnswer:
        return self.answer

    async def describe(self) -> dict[str, Any]:
        return {}


def _request() -> GenerationRequest:
    return GenerationRequest(request_id="r", model="m", prompt="p", n=1, width=64, height=64)


def test_the_remote_backend_returns_results_reraises_engine_errors_and_reports_batches() -> None:
    seen: list[tuple[str, int, float]] = []
    result = GenerationResult(images=[], width=64, height=64, device="model-m#a/sim0")
    ok = RemoteModelBackend("m", FakeCalls(ReplicaAnswer("model-m#a", result=result,
                                                         batches=[("model-m#a/sim0", 2, 0.5)])),
                            observer=lambda *event: seen.append(event))
    assert asyncio.run(ok.generate(_request())) is result
    assert seen == [("model-m#a/sim0", 2, 0.5)]
    assert ok.describe()["replicas_seen"] == [{"replica": "model-m#a", "requests": 1}]
    full = RemoteModelBackend("m", FakeCalls(ReplicaAnswer("model-m#b", error=QueueFull("busy", retry_after=7))))
    with pytest.raises(QueueFull) as raised:
        asyncio.run(full.generate(_request()))
    assert raised.value.retry_after == 7
    oom = RemoteModelBackend("m", FakeCalls(ReplicaAnswer("model-m#c", error=OutOfDeviceMemory("too big"))))
    with pytest.raises(OutOfDeviceMemory):
        asyncio.run(oom.generate(_request()))


def test_engine_errors_survive_the_trip_between_processes() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(ReplicaAnswer("r", error=QueueFull("busy", retry_after=9, code="x")))).error
    assert isinstance(error, QueueFull) and (error.message, error.retry_after, error.code) == ("busy", 9, "x")


def test_serve_ray_without_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setenv("IMAGESERVE_DATA_DIR", str(tmp_path))
    caplog.set_level(logging.ERROR)
    assert main(["serve", "--ray"]) == 2
    assert INSTALL_HINT in caplog.text and "imageserve[ray]" in caplog.text
