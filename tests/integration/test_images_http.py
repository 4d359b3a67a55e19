"""Sizes, formats and signed image URLs, through a real server."""

from __future__ import annotations

import base64
import io
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from PIL import Image

from tests.support.constants import TEST_KEYS
from tests.support.server_harness import running_server

FAST = {"num_inference_steps": 1}


def _generate(server, auth, **body) -> dict:
    payload = {"prompt": "a field", "model": "tiny-flux", "size": "256x256", **FAST, **body}
    response = httpx.post(server.api_url + "/images/generations", json=payload, headers=auth, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-sd3"])
@pytest.mark.parametrize("size", ["256x256", "512x256", "256x768", "1024x1024", "432x272", "2048x256", "256x2048"])
def test_images_come_out_at_exactly_the_requested_size(server, auth, model: str, size: str) -> None:
    body = _generate(server, auth, model=model, size=size, response_format="b64_json")
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert f"{image.width}x{image.height}" == size == body["perf"]["size"]
    assert image.format == "PNG"


@pytest.mark.parametrize(("fmt", "pil_name"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_output_format(server, auth, fmt: str, pil_name: str) -> None:
    body = _generate(server, auth, output_format=fmt, response_format="b64_json")
    assert Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).format == pil_name
    url = _generate(server, auth, output_format=fmt)["data"][0]["url"]
    response = httpx.get(url)
    assert response.headers["content-type"] == f"image/{fmt}"


def test_signed_url_fetches_without_auth_and_tampering_is_refused(server, auth) -> None:
    url = _generate(server, auth)["data"][0]["url"]
    assert url.startswith(server.base_url + "/v1/images/files/")
    response = httpx.get(url)  # no Authorization header
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (256, 256)

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    forged_sig = query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1")
    cases = {
        "bad signature": {**query, "sig": forged_sig},
        "extended expiry": {**query, "expires": str(int(query["expires"]) + 3600)},
        "no signature": {"expires": query["expires"]},
    }
    for case, params in cases.items():
        refused = httpx.get(f"{base}?{urlencode(params)}")
        assert refused.status_code == 403, case
        assert refused.json()["error"]["type"] == "invalid_signature"
    other_name = base.replace(".png", "x.png")
    assert httpx.get(f"{other_name}?{parts.query}").status_code == 403


def test_expired_links_are_refused_and_files_deleted(server, auth) -> None:
    store = server.app.state.store
    url = _generate(server, auth)["data"][0]["url"]
    name = urlsplit(url).path.rsplit("/", 1)[1]
    assert (store.directory / name).exists()
    real_clock = store.clock
    store.clock = lambda: time.time() + 3601  # one hour later
    try:
        response = httpx.get(url)
        assert response.status_code == 410 and response.json()["error"]["type"] == "expired"
        assert not (store.directory / name).exists()
    finally:
        store.clock = real_clock
    url2 = _generate(server, auth)["data"][0]["url"]  # a second image, for the sweep
    name2 = urlsplit(url2).path.rsplit("/", 1)[1]
    store.clock = lambda: time.time() + 3601
    try:
        assert store.delete_expired() >= 1  # the periodic sweep
        assert not (store.directory / name2).exists()
    finally:
        store.clock = real_clock


def test_links_are_valid_for_an_hour_by_default(server, auth) -> None:
    body = _generate(server, auth)
    expires = int(parse_qs(urlsplit(body["data"][0]["url"]).query)["expires"][0])
    assert 3598 <= expires - body["created"] <= 3600  # both stamped by the server during this request


def test_health(server) -> None:
    body = httpx.get(server.base_url + "/health").json()
    assert body["status"] == "ok" and "tiny-flux" in body["models_ready"]


def test_links_follow_the_address_the_client_used_unless_a_public_url_is_set(server, auth, tmp_path) -> None:
    payload = {"prompt": "x", "model": "tiny-flux", "size": "256x256", **FAST}
    via_localhost = server.api_url.replace("127.0.0.1", "localhost")
    body = httpx.post(via_localhost + "/images/generations", json=payload, headers=auth, timeout=120).json()
    url = body["data"][0]["url"]
    assert url.startswith(server.base_url.replace("127.0.0.1", "localhost") + "/v1/images/files/")
    assert httpx.get(url).status_code == 200

    with running_server(data_dir=tmp_path, model_cache=server.settings.model_cache, api_keys=TEST_KEYS,
                        public_url="https://images.example.com/base") as public:
        body = httpx.post(public.api_url + "/images/generations", json=payload, headers=auth, timeout=120).json()
        assert body["data"][0]["url"].startswith("https://images.example.com/base/v1/images/files/")
