"""Bearer keys: 401 in the API's error shape; open only on loopback; keys never echoed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.accounts.credentials import parse_api_keys
from server.cli.serve import check_exposure
from server.settings import load_settings
from tests.support.constants import REPO_ROOT, TEST_KEY
from tests.support.logs import assert_not_logged, capture_everything
from tests.support.server_harness import running_server

BODY = {"prompt": "x", "model": "tiny-flux", "size": "256x256", "num_inference_steps": 1}
WRONG_KEY = "sk-not-the-key"


@pytest.fixture(autouse=True)
def _keys_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here runs with every logger at DEBUG; no key, right or wrong, may show in any record."""
    capture_everything(caplog)
    yield
    capture_everything(caplog)
    assert_not_logged(caplog, TEST_KEY, WRONG_KEY)


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "Missing API key"),
        ({"Authorization": f"Bearer {WRONG_KEY}"}, "Incorrect API key"),
        ({"Authorization": f"Basic {TEST_KEY}"}, "Malformed"),
        ({"Authorization": "Bearer"}, "Malformed"),
        ({"Authorization": TEST_KEY}, "Malformed"),
    ],
)
def test_missing_or_wrong_key_is_401_in_the_error_shape(server, headers: dict, fragment: str) -> None:
    response = httpx.post(server.api_url + "/images/generations", json=BODY, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and fragment in error["message"]
    assert WRONG_KEY not in response.text
    assert httpx.get(server.api_url + "/models", headers=headers).status_code == 401


def test_auth_is_checked_before_the_body(server) -> None:
    response = httpx.post(server.api_url + "/images/generations", content=b"{broken",
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 401


def test_without_keys_a_loopback_server_is_open(tmp_path: Path, model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache) as server:
        response = httpx.post(server.api_url + "/images/generations", json=BODY, timeout=120)
        assert response.status_code == 200, response.text


def test_a_right_and_a_wrong_key_on_every_route_leave_no_trace_in_the_logs(server) -> None:
    """The autouse fixture checks the logs; this drives the accepted and refused paths of each route."""
    right, wrong = {"Authorization": f"Bearer {TEST_KEY}"}, {"Authorization": f"Bearer {WRONG_KEY}"}
    assert httpx.post(server.api_url + "/images/generations", json=BODY, headers=right, timeout=120).status_code == 200
    for headers, status in ((right, 200), (wrong, 401)):
        assert httpx.get(server.api_url + "/models", headers=headers).status_code == status
        assert httpx.get(server.api_url + "/usage", headers=headers).status_code == status
    bad_body = httpx.post(server.api_url + "/images/generations", json={"prompt": ""}, headers=right)
    assert bad_body.status_code == 400


def test_keys_parse_with_tiers_and_bare_keys_mean_pro() -> None:
    assert parse_api_keys("a:free, b ,c:enterprise,,") == {"a": "free", "b": "pro", "c": "enterprise"}
    with pytest.raises(ValueError, match="unknown tier"):
        parse_api_keys("a:gold")


def test_exposure_rules(caplog: pytest.LogCaptureFixture) -> None:
    assert "refusing to listen on 0.0.0.0" in check_exposure(load_settings(host="0.0.0.0"))
    assert check_exposure(load_settings(host="0.0.0.0", api_keys="k1")) is None
    with caplog.at_level("WARNING"):
        assert check_exposure(load_settings(host="127.0.0.1")) is None
    assert "NO API KEYS CONFIGURED" in caplog.text


def test_serve_refuses_a_public_address_without_keys(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "IMAGESERVE_DATA_DIR": str(tmp_path), "HOME": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, "-m", "server.cli.main", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT,
    )
    assert completed.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in completed.stderr


def test_models_command_lists_provider_status_device_and_dtype(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "IMAGESERVE_DATA_DIR": str(tmp_path), "HOME": str(tmp_path),
           "IMAGESERVE_MODEL_CACHE": str(tmp_path / "cache")}
    completed = subprocess.run([sys.executable, "-m", "server.cli.main", "models"], capture_output=True, text=True,
                               timeout=120, env=env, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    lines = {line.split()[0]: line for line in completed.stdout.splitlines()[1:]}
    assert "cpu/fp32" in lines["tiny-flux"] and " yes " in lines["tiny-flux"]
    assert " no " in lines["flux-dev"] and "imageserve pull flux-dev" in lines["flux-dev"]
    assert "openai" in lines["dall-e-3"] and " no " in lines["dall-e-3"]
