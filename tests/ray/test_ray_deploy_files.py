"""`deploy/ray/serve-config.yaml` and `deploy/kuberay/rayservice.yaml`: valid for Ray Serve 2.60 and KubeRay's
v1 API, and their import path builds this application. No cluster runs here: Serve's own schema checks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray")
from ray._common.utils import import_attr  # noqa: E402
from ray.serve import Application  # noqa: E402
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from server.ray_serve.application import build  # noqa: E402
from tests.support.constants import REPO_ROOT  # noqa: E402

SERVE_CONFIG = REPO_ROOT / "deploy" / "ray" / "serve-config.yaml"
RAYSERVICE = REPO_ROOT / "deploy" / "kuberay" / "rayservice.yaml"


def _check_serve_config(config: dict[str, Any], tmp_path: Path) -> ServeDeploySchema:
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "server.ray_serve.application:build" and import_attr(app.import_path) is build
    # The builder with these arguments, the config file swapped for a local one with a model on the cluster.
    local = tmp_path / "imageserve.toml"
    local.write_text('[models.flux-dev.ray]\nnum_replicas = 2\n[models.sim]\nkind = "simulated"\n'
                     '[models.sim.ray]\nmax_replicas = 3\n')
    built = build({**app.args, "config": str(local)})
    assert isinstance(built, Application)
    return schema


def test_the_serve_config_file_validates_and_builds(tmp_path: Path) -> None:
    schema = _check_serve_config(yaml.safe_load(SERVE_CONFIG.read_text()), tmp_path)
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    assert {d.name for d in schema.applications[0].deployments} <= {"ingress", "model-flux-dev", "model-sim"}
    assert "api_keys" not in SERVE_CONFIG.read_text()  # secrets stay in the nodes' environment


def test_the_rayservice_has_a_cpu_head_a_gpu_worker_group_and_a_valid_serve_config(tmp_path: Path) -> None:
    documents = list(yaml.safe_load_all(RAYSERVICE.read_text()))
    kinds = {doc["kind"]: doc for doc in documents}
    service, config_map = kinds["RayService"], kinds["ConfigMap"]
    assert service["apiVersion"] == "ray.io/v1"
    _check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]), tmp_path)
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu_group,) = cluster["workerGroupSpecs"]
    worker = gpu_group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    # Secrets come from a Kubernetes Secret, settings from the ConfigMap mounted where the serve config says.
    for container in (head, worker):
        assert container["envFrom"] == [{"secretRef": {"name": "imageserve-secrets"}}]
        assert {"name": "config", "mountPath": "/etc/imageserve"} in container["volumeMounts"]
    from server.settings import load_settings

    toml = tmp_path / "from-configmap.toml"
    toml.write_text(config_map["data"]["imageserve.toml"])
    settings = load_settings(toml)  # the settings in the ConfigMap load
    assert settings.models["flux-dev"].ray is not None and settings.models["flux-dev"].ray.max_replicas == 4
