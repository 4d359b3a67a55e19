"""What a new user meets first: setup errors that clients do not retry and that say what to do, limits said
once per model, and image links whose caching headers tell the truth."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.server_harness import running_server


def test_a_default_model_that_cannot_run_is_a_503_not_retried_that_names_the_ready_models(tmp_path: Path,
                                                                                          model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache) as server:  # default: dall-e-3, no key
        client = OpenAI(base_url=server.api_url, api_key="unused", max_retries=2)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as raised:
            client.images.generate(prompt="a fox")
        assert time.monotonic() - started < 5  # the SDK honoured x-should-retry: no backoff, no second try
        response = raised.value.response
        assert response.status_code == 503 and response.headers["x-should-retry"] == "false"
        message = raised.value.body["message"]
        assert "IMAGESERVE_DEFAULT_MODEL" in message and "'dall-e-3'" in message and "tiny-flux" in message
        named = httpx.post(server.api_url + "/images/generations", json={"prompt": "x", "model": "dall-e-3"})
        assert named.status_code == 503 and "IMAGESERVE_DEFAULT_MODEL" not in named.json()["error"]["message"]


@pytest.mark.parametrize("n", [5, 20, 1000])
def test_n_is_checked_against_the_model_once(server, auth, n: int) -> None:
    response = httpx.post(server.api_url + "/images/generations", headers=auth,
                          json={"prompt": "x", "model": "tiny-flux", "n": n, "size": "256x256"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    assert "between 1 and 4" in response.json()["error"]["message"]


def test_image_links_say_when_the_image_was_made_and_are_never_cached_beyond_the_link(tmp_path: Path,
                                                                                      model_cache: Path) -> None:
    with running_server(data_dir=tmp_path, model_cache=model_cache, url_ttl_seconds=120) as server:
        before = time.time()
        made = httpx.post(server.api_url + "/images/generations", timeout=120,
                          json={"prompt": "x", "model": "tiny-flux", "size": "256x256", "num_inference_steps": 1})
        fetched = httpx.get(made.json()["data"][0]["url"])
    assert fetched.status_code == 200
    modified = parsedate_to_datetime(fetched.headers["last-modified"]).timestamp()
    assert before - 2 <= modified <= time.time() + 1  # not an hour in the future
    max_age = int(fetched.headers["cache-control"].split("max-age=")[1])
    assert 0 < max_age <= 120


def test_the_start_log_says_what_is_ready_and_where_to_go(tmp_path: Path, model_cache: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="server.app")
    with running_server(data_dir=tmp_path, model_cache=model_cache) as server:
        pass
    (block,) = [record.getMessage() for record in caplog.records if "imageserve is serving on" in record.getMessage()]
    assert f"imageserve is serving on {server.base_url}" in block
    assert "ready models:" in block and "tiny-flux" in block.split("ready models:")[1].splitlines()[0]
    assert "default model: dall-e-3 (NOT ready: no OpenAI API key" in block
    assert f"{server.base_url}/playground" in block and f"{server.base_url}/docs" in block
