"""`Server-Timing` on image answers through a real server, and the stage histogram behind `/metrics`."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server_timing import parse_server_timing

BODY = {"prompt": "a field", "model": "tiny-flux", "size": "256x256", "num_inference_steps": 1}
LOCAL_STAGES = ["auth", "queue", "device", "encode"]


def _generate(server, headers, **body) -> httpx.Response:
    """A tiny-flux request with `body`'s fields; a field given as None is left out."""
    payload = {key: value for key, value in {**BODY, **body}.items() if value is not None}
    return httpx.post(server.api_url + "/images/generations", json=payload, headers=headers, timeout=120)


def _stage_counts(server) -> dict[tuple[str, str], float]:
    text = httpx.get(server.base_url + "/metrics").text
    return {(sample.labels["model"], sample.labels["stage"]): sample.value
            for family in text_string_to_metric_families(text) if family.name == "imageserve_stage_seconds"
            for sample in family.samples if sample.name == "imageserve_stage_seconds_count"}


def _check_consistent(stages: dict[str, float], perf: dict) -> None:
    assert all(value >= 0 for value in stages.values())
    # The stages other than total do not overlap in time; 0.1 ms rounding each.
    assert sum(value for name, value in stages.items() if name != "total") <= stages["total"] + 1.0
    assert stages["device"] == pytest.approx(perf["device_ms"], abs=0.05)


@pytest.mark.parametrize(("response_format", "expected"), [
    ("b64_json", [*LOCAL_STAGES, "total"]),
    ("url", [*LOCAL_STAGES, "store", "total"]),  # only links are stored
])
def test_a_local_model_answer_says_where_its_time_went(server, auth, response_format, expected) -> None:
    response = _generate(server, auth, response_format=response_format, n=2)
    assert response.status_code == 200, response.text
    stages = parse_server_timing(response.headers["server-timing"])
    assert list(stages) == expected
    _check_consistent(stages, response.json()["perf"])


def test_the_perf_block_keeps_its_fields_and_names_the_device(server, auth) -> None:
    perf = _generate(server, auth, response_format="b64_json").json()["perf"]
    assert set(perf) == {"request_id", "model_used", "size", "quality", "cost_usd", "latency_ms", "batch_size",
                         "device_ms", "device"}
    assert perf["device"] == "cpu"  # no `devices` setting: the one device IMAGESERVE_DEVICE chose


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({"Authorization": "Bearer sk-wrong"}, {}, 401),
    (None, {"n": 99}, 400),  # `None`: the good key
    (None, {"model": "no-such-model"}, 400),
    # No OpenAI key is configured: the model is unavailable.
    (None, {"model": "dall-e-3", "size": "1024x1024", "num_inference_steps": None}, 503),
])
def test_an_error_answer_has_auth_and_total(server, auth, headers, body, status) -> None:
    response = _generate(server, headers or auth, **body)
    assert response.status_code == status, response.text
    assert list(parse_server_timing(response.headers["server-timing"])) == ["auth", "total"]


def test_metrics_observe_each_stage_once_per_successful_request(server, auth) -> None:
    before = _stage_counts(server)
    for response_format in ("b64_json", "url", "url"):
        assert _generate(server, auth, response_format=response_format).status_code == 200
    assert _generate(server, {"Authorization": "Bearer sk-wrong"}).status_code == 401  # not observed
    after = _stage_counts(server)
    added = {stage: after.get(("tiny-flux", stage), 0) - before.get(("tiny-flux", stage), 0)
             for stage in ("auth", "queue", "device", "upstream", "encode", "store", "total")}
    assert added == {"auth": 3, "queue": 3, "device": 3, "upstream": 0, "encode": 3, "store": 2, "total": 3}
