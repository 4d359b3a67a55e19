"""deploy/grafana/imageserve.json: valid JSON, and every metric it queries is one the server exports."""

from __future__ import annotations

import json
import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.constants import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "imageserve.json"


def test_every_panel_queries_metrics_the_server_exports(server, auth) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "imageserve" and len(dashboard["panels"]) >= 10
    # One generation and one error, so the labelled series (requests, latency, stages, batches, errors) exist.
    assert httpx.post(server.api_url + "/images/generations", headers=auth, timeout=120,
                      json={"prompt": "x", "model": "tiny-flux", "size": "256x256",
                            "num_inference_steps": 1}).status_code == 200
    assert httpx.post(server.api_url + "/images/generations", json={}).status_code in (400, 401)  # an error too
    exported = {sample.name for family in text_string_to_metric_families(httpx.get(server.base_url + "/metrics").text)
                for sample in family.samples}
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"imageserve_[a-z_]+", target["expr"])}
    gpu_only = {"imageserve_gpu_memory_allocated_bytes"}  # exported only where CUDA is in use
    assert queried - gpu_only <= exported, sorted(queried - gpu_only - exported)
    assert {"imageserve_requests_total", "imageserve_queue_depth", "imageserve_device_busy_seconds_total",
            "imageserve_cost_usd_total"} <= queried
